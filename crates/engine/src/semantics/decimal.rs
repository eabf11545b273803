//! `+ - *` of `numeric` (arrow's `Decimal128`) without a checked 128-bit
//! operation per row.
//!
//! Arrow's decimal kernels check every row's multiplication for overflow
//! (a call into a 128-bit multiply-with-overflow routine), and an addition
//! of two scales rescales both sides with checked multiplications: TPC-H
//! q1's `l_extendedprice * (1 - l_discount) * (1 + l_tax)` is seven checked
//! `i128` multiplications per row, most of the query's arithmetic. Here the
//! largest magnitude of each side (one pass over its values) bounds every
//! row's result: when the bound fits, no row can overflow and the rows are
//! computed with plain (vectorizable) operations, as one `i64 × i64 → i128`
//! multiplication when both sides fit in 64 bits. When the bound does not
//! fit, arrow's checked kernel computes the batch, so the answers and the
//! errors are arrow's in every case (an overflow is 22003, in Postgres'
//! words): the same values, the same result type.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, PrimitiveArray};
use datafusion::arrow::compute::kernels::numeric;
use datafusion::arrow::datatypes::{DECIMAL128_MAX_PRECISION, DECIMAL128_MAX_SCALE, DataType, Decimal128Type};
use datafusion::arrow::error::ArrowError;
use datafusion::common::{DataFusionError, Result as DfResult, ScalarValue};
use datafusion::logical_expr::ColumnarValue;

use crate::error::{Error, StatusCode};

/// A decimal operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Op {
    Add,
    Sub,
    Mul,
}

/// One side: an array's values, or a scalar's value.
enum Side<'a> {
    Array(&'a PrimitiveArray<Decimal128Type>),
    Scalar(i128),
}

impl Side<'_> {
    /// The largest magnitude of the values (null slots included: a bound).
    fn bound(&self) -> u128 {
        match self {
            Side::Array(array) => array.values().iter().map(|v| v.unsigned_abs()).max().unwrap_or(0),
            Side::Scalar(v) => v.unsigned_abs(),
        }
    }
}

/// `left op right` over `Decimal128` values, the result typed `to` (what
/// DataFusion typed the operation).
pub(super) fn evaluate(
    op: Op,
    left: &ColumnarValue,
    right: &ColumnarValue,
    rows: usize,
    to: &DataType,
) -> DfResult<ColumnarValue> {
    if let Some(result) = fast(op, left, right, to)? {
        return Ok(result);
    }
    let scalar = matches!((left, right), (ColumnarValue::Scalar(_), ColumnarValue::Scalar(_)));
    let rows = if scalar { 1 } else { rows };
    let (l, r) = (left.to_array(rows)?, right.to_array(rows)?);
    let result = match op {
        Op::Add => numeric::add(&l, &r),
        Op::Sub => numeric::sub(&l, &r),
        Op::Mul => numeric::mul(&l, &r),
    }
    .map_err(|e| match e {
        ArrowError::ArithmeticOverflow(_) => overflow(),
        other => DataFusionError::ArrowError(Box::new(other), None),
    })?;
    if scalar {
        Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&result, 0)?))
    } else {
        Ok(ColumnarValue::Array(result))
    }
}

/// A `numeric` result past its type's digits, in Postgres' words (22003).
pub(super) fn overflow() -> DataFusionError {
    DataFusionError::External(Box::new(Error::new(
        StatusCode::NumericOverflow,
        "value overflows numeric format".to_string(),
    )))
}

fn side(value: &ColumnarValue) -> Option<(Side<'_>, u8, i8)> {
    match value {
        ColumnarValue::Array(array) => match array.data_type() {
            DataType::Decimal128(p, s) => Some((Side::Array(array.as_primitive::<Decimal128Type>()), *p, *s)),
            _ => None,
        },
        ColumnarValue::Scalar(ScalarValue::Decimal128(Some(v), p, s)) => Some((Side::Scalar(*v), *p, *s)),
        ColumnarValue::Scalar(_) => None,
    }
}

/// The result without checks when no row can overflow; `None` where
/// arrow's kernel must decide (a bound that does not fit, two scalars, a
/// NULL scalar, another type).
fn fast(op: Op, left: &ColumnarValue, right: &ColumnarValue, to: &DataType) -> DfResult<Option<ColumnarValue>> {
    let (Some((l, p1, s1)), Some((r, p2, s2))) = (side(left), side(right)) else {
        return Ok(None);
    };
    // Arrow's result type (Hive's rules), which DataFusion typed the operation with.
    let max = DECIMAL128_MAX_PRECISION;
    let (precision, scale) = match op {
        Op::Add | Op::Sub => {
            let scale = s1.max(s2);
            let digits = (p1 as i8 - s1).max(p2 as i8 - s2);
            ((scale.saturating_add(digits) as u8).saturating_add(1).min(max), scale)
        }
        Op::Mul => (p1.saturating_add(p2 + 1).min(max), s1.saturating_add(s2)),
    };
    if *to != DataType::Decimal128(precision, scale) || !(0..=DECIMAL128_MAX_SCALE).contains(&scale) {
        return Ok(None);
    }
    let (lb, rb) = (l.bound(), r.bound());
    let fits = |bound: Option<u128>| bound.is_some_and(|b| b <= i128::MAX as u128);
    let result: PrimitiveArray<Decimal128Type> = match op {
        Op::Mul => {
            if !fits(lb.checked_mul(rb)) {
                return Ok(None);
            }
            let narrow = lb <= i64::MAX as u128 && rb <= i64::MAX as u128;
            match (l, r, narrow) {
                (Side::Scalar(_), Side::Scalar(_), _) => return Ok(None),
                // Both sides fit in 64 bits: a widening multiplication.
                (Side::Array(a), Side::Array(b), true) => {
                    datafusion::arrow::compute::binary(a, b, |x, y| (x as i64 as i128) * (y as i64 as i128))?
                }
                (Side::Array(a), Side::Array(b), false) => {
                    datafusion::arrow::compute::binary(a, b, |x, y| x.wrapping_mul(y))?
                }
                (Side::Array(a), Side::Scalar(y), _) | (Side::Scalar(y), Side::Array(a), _) => {
                    a.unary(|x| x.wrapping_mul(y))
                }
            }
        }
        Op::Add | Op::Sub => {
            // Both sides at the result's scale: multiplied by 10^(scale - own scale).
            let (Some(lm), Some(rm)) =
                (10u128.checked_pow((scale - s1) as u32), 10u128.checked_pow((scale - s2) as u32))
            else {
                return Ok(None);
            };
            let bound = lb.checked_mul(lm).zip(rb.checked_mul(rm)).and_then(|(a, b)| a.checked_add(b));
            if !fits(bound) {
                return Ok(None);
            }
            let (lm, rm) = (lm as i128, rm as i128);
            let sub = op == Op::Sub;
            match (l, r) {
                (Side::Scalar(_), Side::Scalar(_)) => return Ok(None),
                (Side::Array(a), Side::Array(b)) => match (lm, rm, sub) {
                    (1, 1, false) => datafusion::arrow::compute::binary(a, b, |x, y| x.wrapping_add(y))?,
                    (1, 1, true) => datafusion::arrow::compute::binary(a, b, |x, y| x.wrapping_sub(y))?,
                    (_, _, false) => datafusion::arrow::compute::binary(a, b, |x, y| {
                        x.wrapping_mul(lm).wrapping_add(y.wrapping_mul(rm))
                    })?,
                    (_, _, true) => datafusion::arrow::compute::binary(a, b, |x, y| {
                        x.wrapping_mul(lm).wrapping_sub(y.wrapping_mul(rm))
                    })?,
                },
                (Side::Array(a), Side::Scalar(y)) => {
                    let y = y.wrapping_mul(rm);
                    match (lm, sub) {
                        (1, false) => a.unary(|x| x.wrapping_add(y)),
                        (1, true) => a.unary(|x| x.wrapping_sub(y)),
                        (_, false) => a.unary(|x| x.wrapping_mul(lm).wrapping_add(y)),
                        (_, true) => a.unary(|x| x.wrapping_mul(lm).wrapping_sub(y)),
                    }
                }
                (Side::Scalar(x), Side::Array(b)) => {
                    let x = x.wrapping_mul(lm);
                    match (rm, sub) {
                        (1, false) => b.unary(|y| x.wrapping_add(y)),
                        (1, true) => b.unary(|y| x.wrapping_sub(y)),
                        (_, false) => b.unary(|y| x.wrapping_add(y.wrapping_mul(rm))),
                        (_, true) => b.unary(|y| x.wrapping_sub(y.wrapping_mul(rm))),
                    }
                }
            }
        }
    };
    let result = result.with_precision_and_scale(precision, scale)?;
    Ok(Some(ColumnarValue::Array(Arc::new(result) as ArrayRef)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Decimal128Array;

    /// A small deterministic generator (xorshift), so failures repeat.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        /// A value of up to `digits` digits, either sign.
        fn decimal(&mut self, digits: u32) -> i128 {
            let magnitude = match self.next() % 4 {
                0 => 10i128.pow(digits) - 1,
                _ => ((self.next() as i128) << 64 | self.next() as i128).rem_euclid(10i128.pow(digits)),
            };
            if self.next().is_multiple_of(2) { magnitude } else { -magnitude }
        }
    }

    fn column(rng: &mut Rng, rows: usize, p: u8, s: i8, digits: u32) -> ArrayRef {
        let values: Decimal128Array =
            (0..rows).map(|i| (i % 7 != 3).then(|| rng.decimal(digits))).collect::<Decimal128Array>();
        Arc::new(values.with_precision_and_scale(p, s).expect("type"))
    }

    fn arrow(op: Op, l: &ArrayRef, r: &ArrayRef) -> Result<ArrayRef, String> {
        match op {
            Op::Add => numeric::add(l, r),
            Op::Sub => numeric::sub(l, r),
            Op::Mul => numeric::mul(l, r),
        }
        .map_err(|e| e.to_string())
    }

    /// Random operands, arrays and scalars, small and near the edge of
    /// `i128`: the same values, type and errors as arrow's checked kernels.
    #[test]
    fn answers_and_errors_are_arrows() {
        let mut rng = Rng(0x5eed_1234_abcd_0042);
        let shapes: [(u8, i8); 6] = [(15, 2), (20, 0), (23, 2), (38, 4), (38, 10), (10, 5)];
        let mut fast_paths = 0;
        for round in 0..2000 {
            let op = [Op::Add, Op::Sub, Op::Mul][round % 3];
            let (p1, s1) = shapes[rng.next() as usize % shapes.len()];
            let (p2, s2) = shapes[rng.next() as usize % shapes.len()];
            let d1 = 1 + (rng.next() % u64::from(p1)) as u32;
            let d2 = 1 + (rng.next() % u64::from(p2)) as u32;
            let rows = 1 + rng.next() as usize % 40;
            let l = column(&mut rng, rows, p1, s1, d1);
            let r = column(&mut rng, rows, p2, s2, d2);
            let expected = arrow(op, &l, &r);
            let to = match &expected {
                Ok(array) => array.data_type().clone(),
                Err(_) => arrow(op, &l.slice(0, 0), &r.slice(0, 0)).expect("empty").data_type().clone(),
            };
            let scalar_left = rng.next().is_multiple_of(3);
            let left = if scalar_left {
                ColumnarValue::Scalar(ScalarValue::try_from_array(&l, 0).expect("scalar"))
            } else {
                ColumnarValue::Array(Arc::clone(&l))
            };
            let expected = if scalar_left {
                let repeated = left.to_array(rows).expect("array");
                arrow(op, &repeated, &r)
            } else {
                expected
            };
            fast_paths +=
                usize::from(fast(op, &left, &ColumnarValue::Array(Arc::clone(&r)), &to).expect("fast").is_some());
            let got = evaluate(op, &left, &ColumnarValue::Array(Arc::clone(&r)), rows, &to)
                .and_then(|v| v.to_array(rows))
                .map_err(|e| e.to_string());
            match (&got, &expected) {
                (Ok(g), Ok(e)) => assert_eq!(g.as_ref(), e.as_ref(), "{op:?} {l:?} {r:?}"),
                (Err(g), Err(e)) => {
                    let overflow = e.contains("Overflow happened");
                    assert!(
                        if overflow { g.contains("value overflows numeric format") } else { g.contains(e.as_str()) },
                        "{g} vs {e}"
                    )
                }
                _ => panic!("{op:?} {l:?} {r:?}: got {got:?}, arrow {expected:?}"),
            }
        }
        // Most rounds fit, some do not: both paths were taken.
        assert!(fast_paths > 500 && fast_paths < 1900, "{fast_paths} fast rounds");
    }
}
