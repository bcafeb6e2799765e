//! The Arrow types answers go out in, on both doors: dictionary columns as their value
//! type, view types as their plain types. The encoders would hydrate dictionaries anyway,
//! and a column computed from a dictionary (`CASE … ELSE page END`) can be planned as one
//! type and arrive as the other, so every batch is cast to the one schema announced first;
//! an Arrow IPC stream whose batches disagree with its schema cannot be written.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, FieldRef, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;

/// The type a column is sent as. The encoder hydrates dictionaries anyway (tidemark's
/// dimensions are `Dictionary(Int32, Utf8)`), and many Flight SQL clients (the JDBC driver among
/// them) do not read view types, so both go out as their plain types. Doing it here rather than
/// relying on the encoder's default keeps the announced schema and the sent one identical.
fn wire_type(t: &DataType) -> DataType {
    match t {
        DataType::Dictionary(_, values) => wire_type(values),
        DataType::Utf8View => DataType::Utf8,
        DataType::BinaryView => DataType::Binary,
        DataType::List(f) => DataType::List(wire_field(f)),
        DataType::LargeList(f) => DataType::LargeList(wire_field(f)),
        DataType::FixedSizeList(f, n) => DataType::FixedSizeList(wire_field(f), *n),
        DataType::Struct(fields) => DataType::Struct(fields.iter().map(wire_field).collect()),
        other => other.clone(),
    }
}

fn wire_field(f: &FieldRef) -> FieldRef {
    Arc::new(f.as_ref().clone().with_data_type(wire_type(f.data_type())))
}

/// `schema` as clients receive it.
pub fn wire_schema(schema: &Schema) -> SchemaRef {
    let fields: Vec<FieldRef> = schema.fields().iter().map(wire_field).collect();
    Arc::new(Schema::new(fields).with_metadata(schema.metadata().clone()))
}

/// Casts a result batch to the wire schema announced for it.
pub fn to_wire(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| {
            if column.data_type() == field.data_type() {
                Ok(column.clone())
            } else {
                cast(column, field.data_type())
            }
        })
        .collect::<Result<Vec<ArrayRef>, _>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(schema.clone(), columns, &options)
}
