//! A minimal blocking Kafka producer over the wire protocol, for the load tool and for tests
//! that need exact control: the same batch sent twice with one producer id and sequence, or a
//! node killed between a produce and its acknowledgement. Real-client compatibility is tested
//! with real clients; this is not one, and it speaks only what those needs require
//! (InitProducerId v4, Produce v9, pipelined).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse,
    RequestHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};

const PRODUCE_VERSION: i16 = 9;
const INIT_PRODUCER_ID_VERSION: i16 = 4;
/// Larger answers than this are refused (a produce answer is tiny).
const RESPONSE_BYTES_MAX: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("kafka connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("kafka protocol: {0}")]
    Protocol(String),
}

/// One partition's answer to a produce.
fn protocol(e: impl std::fmt::Display) -> KafkaError {
    KafkaError::Protocol(e.to_string())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionAck {
    pub partition: i32,
    pub error_code: i16,
    pub base_offset: i64,
    pub error_message: Option<String>,
    /// Per-record errors (INVALID_RECORD): (index in the batch, message).
    pub record_errors: Vec<(i32, String)>,
}

#[derive(Debug)]
pub struct KafkaConn {
    stream: TcpStream,
    next_correlation: i32,
    /// `throttle_time_ms` of the last produce answer.
    pub last_throttle_ms: i32,
}

impl KafkaConn {
    pub fn connect(addr: impl ToSocketAddrs) -> Result<KafkaConn, KafkaError> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(KafkaConn {
            stream,
            next_correlation: 1,
            last_throttle_ms: 0,
        })
    }

    fn send<R: Encodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        body: &R,
    ) -> Result<i32, KafkaError> {
        let correlation = self.next_correlation;
        self.next_correlation += 1;
        let mut header = RequestHeader::default();
        header.request_api_key = api as i16;
        header.request_api_version = version;
        header.correlation_id = correlation;
        header.client_id = Some(StrBytes::from_static_str("tidemark-loadgen"));
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        header
            .encode(&mut buf, api.request_header_version(version))
            .map_err(protocol)?;
        body.encode(&mut buf, version).map_err(protocol)?;
        let size = (buf.len() - 4) as i32;
        buf[0..4].copy_from_slice(&size.to_be_bytes());
        self.stream.write_all(&buf)?;
        Ok(correlation)
    }

    fn receive<R: Decodable + HeaderVersion>(
        &mut self,
        version: i16,
        correlation: i32,
    ) -> Result<R, KafkaError> {
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size)?;
        let size = i32::from_be_bytes(size);
        if size < 4 || size as usize > RESPONSE_BYTES_MAX {
            return Err(KafkaError::Protocol(format!(
                "response size {size} is out of range"
            )));
        }
        let mut body = vec![0u8; size as usize];
        self.stream.read_exact(&mut body)?;
        let mut body = Bytes::from(body);
        let got = body.get_i32();
        if got != correlation {
            return Err(KafkaError::Protocol(format!(
                "answer {got} arrived where {correlation} was expected"
            )));
        }
        if R::header_version(version) >= 1 {
            // Response header v1: tagged fields after the correlation id.
            let mut tags = 0u32;
            let mut shift = 0;
            loop {
                if !body.has_remaining() {
                    return Err(KafkaError::Protocol("response header is truncated".into()));
                }
                let b = body.get_u8();
                tags |= u32::from(b & 0x7f) << shift;
                shift += 7;
                if b & 0x80 == 0 {
                    break;
                }
            }
            if tags != 0 {
                return Err(KafkaError::Protocol(
                    "unexpected tagged fields in a response header".into(),
                ));
            }
        }
        R::decode(&mut body, version).map_err(protocol)
    }

    /// Allocates an idempotent producer id: (id, epoch).
    pub fn init_producer_id(&mut self) -> Result<(i64, i16), KafkaError> {
        self.reinit_producer_id(-1, -1)
    }

    /// Re-initialises a producer id (KIP-360): the same id with a bumped epoch.
    pub fn reinit_producer_id(
        &mut self,
        producer_id: i64,
        epoch: i16,
    ) -> Result<(i64, i16), KafkaError> {
        let mut req = InitProducerIdRequest::default();
        req.transactional_id = None;
        req.transaction_timeout_ms = 60_000;
        req.producer_id = kafka_protocol::messages::ProducerId(producer_id);
        req.producer_epoch = epoch;
        let c = self.send(ApiKey::InitProducerId, INIT_PRODUCER_ID_VERSION, &req)?;
        let resp: InitProducerIdResponse = self.receive(INIT_PRODUCER_ID_VERSION, c)?;
        if resp.error_code != 0 {
            return Err(KafkaError::Protocol(format!(
                "InitProducerId failed with error {}",
                resp.error_code
            )));
        }
        Ok((resp.producer_id.0, resp.producer_epoch))
    }

    /// Sends a produce request of one record batch per partition, without waiting; returns
    /// its correlation id for [`Self::read_produce`]. Answers come back in send order.
    pub fn send_produce(
        &mut self,
        topic: &str,
        batches: &[(i32, Bytes)],
        acks: i16,
    ) -> Result<i32, KafkaError> {
        let mut t = TopicProduceData::default();
        t.name = TopicName(StrBytes::from_string(topic.to_string()));
        t.partition_data = batches
            .iter()
            .map(|(p, b)| {
                let mut d = PartitionProduceData::default();
                d.index = *p;
                d.records = Some(b.clone());
                d
            })
            .collect();
        let mut req = ProduceRequest::default();
        req.acks = acks;
        req.timeout_ms = 30_000;
        req.topic_data = vec![t];
        self.send(ApiKey::Produce, PRODUCE_VERSION, &req)
    }

    pub fn read_produce(&mut self, correlation: i32) -> Result<Vec<PartitionAck>, KafkaError> {
        let resp: ProduceResponse = self.receive(PRODUCE_VERSION, correlation)?;
        self.last_throttle_ms = resp.throttle_time_ms;
        Ok(resp
            .responses
            .iter()
            .flat_map(|t| t.partition_responses.iter())
            .map(|p| PartitionAck {
                partition: p.index,
                error_code: p.error_code,
                base_offset: p.base_offset,
                error_message: p.error_message.as_ref().map(|m| m.to_string()),
                record_errors: p
                    .record_errors
                    .iter()
                    .map(|e| {
                        (
                            e.batch_index,
                            e.batch_index_error_message
                                .as_ref()
                                .map(|m| m.to_string())
                                .unwrap_or_default(),
                        )
                    })
                    .collect(),
            })
            .collect())
    }

    /// Writes raw bytes (tests of malformed input).
    pub fn write_raw(&mut self, bytes: &[u8]) -> Result<(), KafkaError> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// Whether the peer closed the connection (reads until EOF or `timeout`).
    pub fn closed_within(&mut self, timeout: Duration) -> Result<bool, KafkaError> {
        self.stream.set_read_timeout(Some(timeout))?;
        let mut buf = [0u8; 1024];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return Ok(true),
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(false);
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(true),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends and waits (acks must not be 0: a request with acks=0 gets no answer).
    pub fn produce(
        &mut self,
        topic: &str,
        batches: &[(i32, Bytes)],
        acks: i16,
    ) -> Result<Vec<PartitionAck>, KafkaError> {
        let c = self.send_produce(topic, batches, acks)?;
        self.read_produce(c)
    }
}
