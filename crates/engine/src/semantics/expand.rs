//! `information_schema._pg_expandarray(a)`, which JDBC drivers call to
//! number the columns of an index: one `(x, n)` record per element, the
//! element and its 1-based position. The SQL front end rewrites the call to
//! `unnest(pg_expandarray(a))`; this function builds the list of records
//! for `unnest` to turn into rows (zipped with other set-returning calls in
//! the same select list, as Postgres does).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int32Array, ListArray, StructArray};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, Fields};
use datafusion::common::{Result as DfResult, exec_err};
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, ScalarUDFImpl, Signature, Volatility};

use crate::sql::compat::EXPAND_ARRAY_FUNCTION;

/// The `pg_expandarray` function.
pub fn expand_array_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(ExpandArray { signature: Signature::any(1, Volatility::Immutable) })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct ExpandArray {
    signature: Signature,
}

fn record_fields(element: &DataType) -> Fields {
    Fields::from(vec![Field::new("x", element.clone(), true), Field::new("n", DataType::Int32, false)])
}

fn element_type(input: &DataType) -> DfResult<DataType> {
    match input {
        DataType::List(field) | DataType::LargeList(field) | DataType::FixedSizeList(field, _) => {
            Ok(field.data_type().clone())
        }
        DataType::Null => Ok(DataType::Null),
        other => exec_err!("_pg_expandarray expects an array, not {other}"),
    }
}

impl ScalarUDFImpl for ExpandArray {
    fn name(&self) -> &str {
        EXPAND_ARRAY_FUNCTION
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        let element = element_type(&args[0])?;
        Ok(DataType::new_list(DataType::Struct(record_fields(&element)), true))
    }

    fn invoke_with_args(&self, args: datafusion::logical_expr::ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let input = args.args[0].to_array(args.number_rows)?;
        let list: ListArray = match input.data_type() {
            DataType::List(_) => input.as_list::<i32>().clone(),
            DataType::Null => ListArray::new_null(
                Arc::new(Field::new("item", DataType::Struct(record_fields(&DataType::Null)), true)),
                input.len(),
            ),
            other => {
                let target = DataType::new_list(element_type(other)?, true);
                datafusion::arrow::compute::cast(&input, &target)?.as_list::<i32>().clone()
            }
        };
        if matches!(input.data_type(), DataType::Null) {
            return Ok(ColumnarValue::Array(Arc::new(list)));
        }
        let offsets = list.offsets();
        let first = offsets[0];
        let values = list.values().slice(first as usize, (offsets[offsets.len() - 1] - first) as usize);
        let mut positions = Vec::with_capacity(values.len());
        for window in offsets.windows(2) {
            positions.extend(1..=(window[1] - window[0]));
        }
        let element = values.data_type().clone();
        let records = StructArray::try_new(
            record_fields(&element),
            vec![values, Arc::new(Int32Array::from(positions)) as ArrayRef],
            None,
        )?;
        let rebased = OffsetBuffer::new(offsets.iter().map(|o| o - first).collect::<Vec<_>>().into());
        let out = ListArray::try_new(
            Arc::new(Field::new("item", DataType::Struct(record_fields(&element)), true)),
            rebased,
            Arc::new(records),
            list.nulls().cloned(),
        )?;
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}
