//! Length checks on a request body before `kafka-protocol` decodes it.
//!
//! The crate sizes every array with `Vec::with_capacity(declared_count)`, so a tiny request
//! that declares two billion elements would make the node allocate gigabytes and abort
//! (Kafka's CVE-2022-34917). This module walks the body against a compact schema of each
//! request the door accepts, at the versions it advertises, and refuses the request unless
//! every declared array count, string and byte length fits in the bytes that remain. Only
//! then is the body handed to the crate, whose allocations are then bounded by the request
//! size. Nothing here allocates.
//!
//! The schemas are ours, written from the Kafka protocol's message definitions; a test
//! checks each against the crate's own encoder at every advertised version, so a schema that
//! disagrees with the wire format fails CI rather than refusing good clients.

use kafka_protocol::messages::ApiKey;

/// Field types, as far as lengths are concerned.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ty {
    I8,
    I16,
    I32,
    I64,
    Bool,
    Uuid,
    Str,
    Bytes,
    /// An array of int32.
    I32s,
    /// An array of strings.
    Strs,
    /// An array of structs.
    Structs(&'static [Field]),
}

/// A field present in versions `min..=max`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Field(Ty, i16, i16);

const MAX: i16 = i16::MAX;

const fn f(t: Ty) -> Field {
    Field(t, 0, MAX)
}
const fn from(t: Ty, min: i16) -> Field {
    Field(t, min, MAX)
}
const fn upto(t: Ty, max: i16) -> Field {
    Field(t, 0, max)
}
const fn between(t: Ty, min: i16, max: i16) -> Field {
    Field(t, min, max)
}

use Ty::*;

/// One request type: the first flexible version (compact lengths, tagged fields) and fields.
#[derive(Debug)]
pub(crate) struct Schema {
    pub flexible_from: i16,
    pub fields: &'static [Field],
}

const PRODUCE_PARTITION: &[Field] = &[f(I32), f(Bytes)];
const PRODUCE_TOPIC: &[Field] = &[upto(Str, 12), from(Uuid, 13), f(Structs(PRODUCE_PARTITION))];
const PRODUCE: &[Field] = &[f(Str), f(I16), f(I32), f(Structs(PRODUCE_TOPIC))];

const FETCH_PARTITION: &[Field] = &[
    f(I32),
    from(I32, 9),
    f(I64),
    from(I32, 12),
    from(I64, 5),
    f(I32),
];
const FETCH_TOPIC: &[Field] = &[upto(Str, 12), from(Uuid, 13), f(Structs(FETCH_PARTITION))];
const FORGOTTEN_TOPIC: &[Field] = &[upto(Str, 12), from(Uuid, 13), f(I32s)];
const FETCH: &[Field] = &[
    upto(I32, 14),
    f(I32),
    f(I32),
    f(I32),
    f(I8),
    from(I32, 7),
    from(I32, 7),
    f(Structs(FETCH_TOPIC)),
    from(Structs(FORGOTTEN_TOPIC), 7),
    from(Str, 11),
];

const LIST_OFFSETS_PARTITION: &[Field] = &[f(I32), from(I32, 4), f(I64)];
const LIST_OFFSETS_TOPIC: &[Field] = &[f(Str), f(Structs(LIST_OFFSETS_PARTITION))];
const LIST_OFFSETS: &[Field] = &[
    f(I32),
    from(I8, 2),
    f(Structs(LIST_OFFSETS_TOPIC)),
    from(I32, 10),
];

const METADATA_TOPIC: &[Field] = &[from(Uuid, 10), f(Str)];
const METADATA: &[Field] = &[
    f(Structs(METADATA_TOPIC)),
    from(Bool, 4),
    between(Bool, 8, 10),
    from(Bool, 8),
];

const OFFSET_COMMIT_PARTITION: &[Field] = &[f(I32), f(I64), from(I32, 6), f(Str)];
const OFFSET_COMMIT_TOPIC: &[Field] = &[f(Str), f(Structs(OFFSET_COMMIT_PARTITION))];
const OFFSET_COMMIT: &[Field] = &[
    f(Str),
    f(I32),
    f(Str),
    from(Str, 7),
    upto(I64, 4),
    f(Structs(OFFSET_COMMIT_TOPIC)),
];

const OFFSET_FETCH_TOPIC: &[Field] = &[f(Str), f(I32s)];
const OFFSET_FETCH_GROUP: &[Field] = &[
    f(Str),
    from(Str, 9),
    from(I32, 9),
    f(Structs(OFFSET_FETCH_TOPIC)),
];
const OFFSET_FETCH: &[Field] = &[
    upto(Str, 7),
    upto(Structs(OFFSET_FETCH_TOPIC), 7),
    from(Structs(OFFSET_FETCH_GROUP), 8),
    from(Bool, 7),
];

const FIND_COORDINATOR: &[Field] = &[upto(Str, 3), from(I8, 1), from(Strs, 4)];

const JOIN_GROUP_PROTOCOL: &[Field] = &[f(Str), f(Bytes)];
const JOIN_GROUP: &[Field] = &[
    f(Str),
    f(I32),
    from(I32, 1),
    f(Str),
    from(Str, 5),
    f(Str),
    f(Structs(JOIN_GROUP_PROTOCOL)),
    from(Str, 8),
];

const HEARTBEAT: &[Field] = &[f(Str), f(I32), f(Str), from(Str, 3)];

const LEAVE_GROUP_MEMBER: &[Field] = &[f(Str), f(Str), from(Str, 5)];
const LEAVE_GROUP: &[Field] = &[f(Str), upto(Str, 2), from(Structs(LEAVE_GROUP_MEMBER), 3)];

const SYNC_GROUP_ASSIGNMENT: &[Field] = &[f(Str), f(Bytes)];
const SYNC_GROUP: &[Field] = &[
    f(Str),
    f(I32),
    f(Str),
    from(Str, 3),
    from(Str, 5),
    from(Str, 5),
    f(Structs(SYNC_GROUP_ASSIGNMENT)),
];

const DESCRIBE_GROUPS: &[Field] = &[f(Strs), from(Bool, 3)];
const LIST_GROUPS: &[Field] = &[from(Strs, 4), from(Strs, 5)];
const DELETE_GROUPS: &[Field] = &[f(Strs)];
const OFFSET_DELETE_PARTITION: &[Field] = &[f(I32)];
const OFFSET_DELETE_TOPIC: &[Field] = &[f(Str), f(Structs(OFFSET_DELETE_PARTITION))];
const OFFSET_DELETE: &[Field] = &[f(Str), f(Structs(OFFSET_DELETE_TOPIC))];

const API_VERSIONS: &[Field] = &[from(Str, 3), from(Str, 3)];

const CREATE_TOPICS_ASSIGNMENT: &[Field] = &[f(I32), f(I32s)];
const CREATE_TOPICS_CONFIG: &[Field] = &[f(Str), f(Str)];
const CREATE_TOPICS_TOPIC: &[Field] = &[
    f(Str),
    f(I32),
    f(I16),
    f(Structs(CREATE_TOPICS_ASSIGNMENT)),
    f(Structs(CREATE_TOPICS_CONFIG)),
];
const CREATE_TOPICS: &[Field] = &[f(Structs(CREATE_TOPICS_TOPIC)), f(I32), from(Bool, 1)];

const DELETE_TOPICS_STATE: &[Field] = &[f(Str), f(Uuid)];
const DELETE_TOPICS: &[Field] = &[from(Structs(DELETE_TOPICS_STATE), 6), upto(Strs, 5), f(I32)];

const CREATE_PARTITIONS_ASSIGNMENT: &[Field] = &[f(I32s)];
const CREATE_PARTITIONS_TOPIC: &[Field] =
    &[f(Str), f(I32), f(Structs(CREATE_PARTITIONS_ASSIGNMENT))];
const CREATE_PARTITIONS: &[Field] = &[f(Structs(CREATE_PARTITIONS_TOPIC)), f(I32), f(Bool)];

const INIT_PRODUCER_ID: &[Field] = &[
    f(Str),
    f(I32),
    from(I64, 3),
    from(I16, 3),
    from(Bool, 6),
    from(Bool, 6),
];

const DESCRIBE_CONFIGS_RESOURCE: &[Field] = &[f(I8), f(Str), f(Strs)];
const DESCRIBE_CONFIGS: &[Field] = &[
    f(Structs(DESCRIBE_CONFIGS_RESOURCE)),
    from(Bool, 1),
    from(Bool, 3),
];

const SASL_HANDSHAKE: &[Field] = &[f(Str)];
const SASL_AUTHENTICATE: &[Field] = &[f(Bytes)];

/// The request types the door serves, the versions it advertises, and their schemas.
pub(crate) fn schema(api: ApiKey) -> Option<(i16, i16, Schema)> {
    let s = |min, max, flexible_from, fields| {
        Some((
            min,
            max,
            Schema {
                flexible_from,
                fields,
            },
        ))
    };
    match api {
        ApiKey::Produce => s(3, 12, 9, PRODUCE),
        ApiKey::Fetch => s(4, 12, 12, FETCH),
        ApiKey::ListOffsets => s(1, 7, 6, LIST_OFFSETS),
        ApiKey::Metadata => s(0, 12, 9, METADATA),
        ApiKey::OffsetCommit => s(2, 9, 8, OFFSET_COMMIT),
        ApiKey::OffsetFetch => s(1, 9, 6, OFFSET_FETCH),
        ApiKey::FindCoordinator => s(0, 4, 3, FIND_COORDINATOR),
        ApiKey::JoinGroup => s(0, 9, 6, JOIN_GROUP),
        ApiKey::Heartbeat => s(0, 4, 4, HEARTBEAT),
        ApiKey::LeaveGroup => s(0, 5, 4, LEAVE_GROUP),
        ApiKey::SyncGroup => s(0, 5, 4, SYNC_GROUP),
        ApiKey::DescribeGroups => s(0, 5, 5, DESCRIBE_GROUPS),
        ApiKey::ListGroups => s(0, 5, 3, LIST_GROUPS),
        ApiKey::DeleteGroups => s(0, 2, 2, DELETE_GROUPS),
        ApiKey::OffsetDelete => s(0, 0, MAX, OFFSET_DELETE),
        ApiKey::ApiVersions => s(0, 4, 3, API_VERSIONS),
        ApiKey::CreateTopics => s(2, 7, 5, CREATE_TOPICS),
        ApiKey::DeleteTopics => s(1, 6, 4, DELETE_TOPICS),
        ApiKey::CreatePartitions => s(0, 3, 2, CREATE_PARTITIONS),
        ApiKey::InitProducerId => s(0, 5, 2, INIT_PRODUCER_ID),
        ApiKey::DescribeConfigs => s(1, 4, 4, DESCRIBE_CONFIGS),
        // v1 only: after a v0 handshake the SASL bytes would come unframed (KIP-152).
        ApiKey::SaslHandshake => s(1, 1, MAX, SASL_HANDSHAKE),
        ApiKey::SaslAuthenticate => s(0, 2, 2, SASL_AUTHENTICATE),
        _ => None,
    }
}

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BoundsError(pub String);

/// Checks that every length `body` declares fits in it, for request `schema` at `version`.
pub(crate) fn check(schema: &Schema, version: i16, body: &[u8]) -> Result<(), BoundsError> {
    walk(schema, version, body).map(|_| ())
}

/// As [`check`], returning how many bytes the schema accounts for (tests compare it with the
/// encoded length to prove a schema matches the wire format).
pub(crate) fn walk(schema: &Schema, version: i16, body: &[u8]) -> Result<usize, BoundsError> {
    let mut w = Walker {
        buf: body,
        pos: 0,
        flexible: version >= schema.flexible_from,
        version,
    };
    w.fields(schema.fields)?;
    Ok(w.pos)
}

struct Walker<'a> {
    buf: &'a [u8],
    pos: usize,
    flexible: bool,
    version: i16,
}

impl Walker<'_> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn skip(&mut self, n: usize, what: &str) -> Result<(), BoundsError> {
        if n > self.remaining() {
            return Err(BoundsError(format!(
                "{what} of {n} bytes runs past the end of the request ({} bytes left at byte {})",
                self.remaining(),
                self.pos
            )));
        }
        self.pos += n;
        Ok(())
    }

    fn int(&mut self, n: usize) -> Result<i64, BoundsError> {
        let b = self
            .buf
            .get(self.pos..self.pos + n)
            .ok_or_else(|| BoundsError("request is truncated".into()))?;
        self.pos += n;
        Ok(b.iter().fold(0i64, |acc, x| (acc << 8) | i64::from(*x)))
    }

    fn uvarint(&mut self) -> Result<u64, BoundsError> {
        let mut v = 0u64;
        for i in 0..5 {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| BoundsError("request is truncated in a varint".into()))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(BoundsError("varint longer than 5 bytes".into()))
    }

    /// A length prefix: `None` for null. Non-flexible lengths are `width` bytes, signed.
    fn length(&mut self, width: usize) -> Result<Option<usize>, BoundsError> {
        if self.flexible {
            let n = self.uvarint()?;
            return Ok(n.checked_sub(1).map(|n| n as usize));
        }
        let raw = self.int(width)?;
        let n = if width == 2 {
            i64::from(raw as u16 as i16)
        } else {
            i64::from(raw as u32 as i32)
        };
        match n {
            -1 => Ok(None),
            n if n < 0 => Err(BoundsError(format!(
                "negative length {n} at byte {}",
                self.pos - width
            ))),
            n => Ok(Some(n as usize)),
        }
    }

    fn count(&mut self, element_min_bytes: usize) -> Result<usize, BoundsError> {
        let at = self.pos;
        let n = self.length(4)?.unwrap_or(0);
        if n.saturating_mul(element_min_bytes) > self.remaining() {
            return Err(BoundsError(format!(
                "array at byte {at} declares {n} elements but only {} bytes remain",
                self.remaining()
            )));
        }
        Ok(n)
    }

    fn fields(&mut self, fields: &[Field]) -> Result<(), BoundsError> {
        for Field(ty, min, max) in fields {
            if (*min..=*max).contains(&self.version) {
                self.value(*ty)?;
            }
        }
        if self.flexible {
            self.tagged_fields()?;
        }
        Ok(())
    }

    fn tagged_fields(&mut self) -> Result<(), BoundsError> {
        let n = self.uvarint()? as usize;
        if n.saturating_mul(2) > self.remaining() {
            return Err(BoundsError(format!(
                "{n} tagged fields cannot fit in {} bytes",
                self.remaining()
            )));
        }
        for _ in 0..n {
            self.uvarint()?;
            let size = self.uvarint()? as usize;
            self.skip(size, "tagged field")?;
        }
        Ok(())
    }

    fn value(&mut self, ty: Ty) -> Result<(), BoundsError> {
        match ty {
            I8 | Bool => self.skip(1, "int8"),
            I16 => self.skip(2, "int16"),
            I32 => self.skip(4, "int32"),
            I64 => self.skip(8, "int64"),
            Uuid => self.skip(16, "uuid"),
            Str => {
                let n = self.length(2)?.unwrap_or(0);
                self.skip(n, "string")
            }
            Bytes => {
                let n = self.length(4)?.unwrap_or(0);
                self.skip(n, "bytes")
            }
            I32s => {
                let n = self.count(4)?;
                self.skip(n * 4, "int32 array")
            }
            Strs => {
                let n = self.count(1)?;
                for _ in 0..n {
                    self.value(Str)?;
                }
                Ok(())
            }
            Structs(fields) => {
                let n = self.count(1)?;
                for _ in 0..n {
                    self.fields(fields)?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests;
