//! Result rows as structs: [`to_df`] turns a slice of `#[derive(Serialize)]` rows into a DataFrame,
//! one column per field in declaration order, with the field's own type (`u32` -> UInt32, `f64` ->
//! Float64, `String`/unit enum variants -> String, `bool` -> Boolean, `Option<T>` -> nullable T).
//! A study declares its table once as a struct instead of pushing into parallel vectors.
//!
//! ```
//! use interp_kit::tables::to_df;
//! #[derive(serde::Serialize)]
//! struct Row { layer: u32, condition: String, cos: f64, p: Option<f64> }
//! let df = to_df(&[
//!     Row { layer: 3, condition: "neutral".into(), cos: 0.1, p: None },
//!     Row { layer: 5, condition: "inoculation".into(), cos: -0.2, p: Some(0.04) },
//! ])?;
//! assert_eq!(df.shape(), (2, 4));
//! assert_eq!(df.column("p")?.null_count(), 1);
//! # anyhow::Ok(())
//! ```
use anyhow::{bail, Context, Result};
use polars::prelude::{Column, DataFrame};
use serde::ser::{self, Impossible, Serialize};
use std::fmt;

/// One serialized field value.
#[derive(Clone, Debug, PartialEq)]
enum Cell {
    Null,
    Bool(bool),
    U8(u8),
    U16(u16),
    U32(u32),
    U64(u64),
    I8(i8),
    I16(i16),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
    Str(String),
}

impl Cell {
    fn kind(&self) -> &'static str {
        match self {
            Cell::Null => "null",
            Cell::Bool(_) => "bool",
            Cell::U8(_) => "u8",
            Cell::U16(_) => "u16",
            Cell::U32(_) => "u32",
            Cell::U64(_) => "u64",
            Cell::I8(_) => "i8",
            Cell::I16(_) => "i16",
            Cell::I32(_) => "i32",
            Cell::I64(_) => "i64",
            Cell::F32(_) => "f32",
            Cell::F64(_) => "f64",
            Cell::Str(_) => "string",
        }
    }
}

#[derive(Debug)]
struct Error(String);
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Error {}
impl ser::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

fn unsupported<T>(what: &str) -> Result<T, Error> {
    Err(Error(format!("a table cell cannot be {what}: use a number, string, bool, unit enum or Option of these")))
}

/// Serializes one field value into a [`Cell`].
struct CellSer;

impl ser::Serializer for CellSer {
    type Ok = Cell;
    type Error = Error;
    type SerializeSeq = Impossible<Cell, Error>;
    type SerializeTuple = Impossible<Cell, Error>;
    type SerializeTupleStruct = Impossible<Cell, Error>;
    type SerializeTupleVariant = Impossible<Cell, Error>;
    type SerializeMap = Impossible<Cell, Error>;
    type SerializeStruct = Impossible<Cell, Error>;
    type SerializeStructVariant = Impossible<Cell, Error>;

    fn serialize_bool(self, v: bool) -> Result<Cell, Error> {
        Ok(Cell::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Cell, Error> {
        Ok(Cell::I8(v))
    }
    fn serialize_i16(self, v: i16) -> Result<Cell, Error> {
        Ok(Cell::I16(v))
    }
    fn serialize_i32(self, v: i32) -> Result<Cell, Error> {
        Ok(Cell::I32(v))
    }
    fn serialize_i64(self, v: i64) -> Result<Cell, Error> {
        Ok(Cell::I64(v))
    }
    fn serialize_u8(self, v: u8) -> Result<Cell, Error> {
        Ok(Cell::U8(v))
    }
    fn serialize_u16(self, v: u16) -> Result<Cell, Error> {
        Ok(Cell::U16(v))
    }
    fn serialize_u32(self, v: u32) -> Result<Cell, Error> {
        Ok(Cell::U32(v))
    }
    fn serialize_u64(self, v: u64) -> Result<Cell, Error> {
        Ok(Cell::U64(v))
    }
    fn serialize_f32(self, v: f32) -> Result<Cell, Error> {
        Ok(Cell::F32(v))
    }
    fn serialize_f64(self, v: f64) -> Result<Cell, Error> {
        Ok(Cell::F64(v))
    }
    fn serialize_char(self, v: char) -> Result<Cell, Error> {
        Ok(Cell::Str(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<Cell, Error> {
        Ok(Cell::Str(v.to_string()))
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<Cell, Error> {
        unsupported("bytes")
    }
    fn serialize_none(self) -> Result<Cell, Error> {
        Ok(Cell::Null)
    }
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<Cell, Error> {
        value.serialize(CellSer)
    }
    fn serialize_unit(self) -> Result<Cell, Error> {
        Ok(Cell::Null)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<Cell, Error> {
        Ok(Cell::Null)
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result<Cell, Error> {
        Ok(Cell::Str(variant.to_string()))
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(self, _: &'static str, value: &T) -> Result<Cell, Error> {
        value.serialize(CellSer)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(self, _: &'static str, _: u32, _: &'static str, _: &T) -> Result<Cell, Error> {
        unsupported("an enum variant with data")
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Error> {
        unsupported("a sequence")
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Error> {
        unsupported("a tuple")
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeTupleStruct, Error> {
        unsupported("a tuple struct")
    }
    fn serialize_tuple_variant(self, _: &'static str, _: u32, _: &'static str, _: usize) -> Result<Self::SerializeTupleVariant, Error> {
        unsupported("a tuple variant")
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Error> {
        unsupported("a map")
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, Error> {
        unsupported("a nested struct (flatten it with #[serde(flatten)])")
    }
    fn serialize_struct_variant(self, _: &'static str, _: u32, _: &'static str, _: usize) -> Result<Self::SerializeStructVariant, Error> {
        unsupported("a struct variant")
    }
}

/// Serializes one row (a struct, or a map from `#[serde(flatten)]`) into `(field, cell)` pairs.
#[derive(Default)]
struct RowSer {
    fields: Vec<(String, Cell)>,
    key: Option<String>,
}

impl<'a> ser::Serializer for &'a mut RowSer {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Impossible<(), Error>;
    type SerializeTuple = Impossible<(), Error>;
    type SerializeTupleStruct = Impossible<(), Error>;
    type SerializeTupleVariant = Impossible<(), Error>;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Impossible<(), Error>;

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, Error> {
        Ok(self)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self, Error> {
        Ok(self)
    }
    fn serialize_bool(self, _: bool) -> Result<(), Error> {
        unsupported("a row that is not a struct (a bool)")
    }
    fn serialize_i8(self, _: i8) -> Result<(), Error> {
        unsupported("a row that is not a struct")
    }
    fn serialize_i16(self, _: i16) -> Result<(), Error> {
        unsupported("a row that is not a struct")
    }
    fn serialize_i32(self, _: i32) -> Result<(), Error> {
        unsupported("a row that is not a struct")
    }
    fn serialize_i64(self, _: i64) -> Result<(), Error> {
        unsupported("a row that is not a struct")
    }
    fn serialize_u8(self, _: u8) -> Result<(), Error> {
        unsupported("a row that is not a struct")
    }
    fn serialize_u16(self, _: u16) -> Result<(), Error> {
        unsupported("a row that is not a struct")
    }
    fn serialize_u32(self, _: u32) -> Result<(), Error> {
        unsupported("a row that is not a struct")
    }
    fn serialize_u64(self, _: u64) -> Result<(), Error> {
        unsupported("a row that is not a struct")
    }
    fn serialize_f32(self, _: f32) -> Result<(), Error> {
        unsupported("a row that is not a struct")
    }
    fn serialize_f64(self, _: f64) -> Result<(), Error> {
        unsupported("a row that is not a struct")
    }
    fn serialize_char(self, _: char) -> Result<(), Error> {
        unsupported("a row that is not a struct")
    }
    fn serialize_str(self, _: &str) -> Result<(), Error> {
        unsupported("a row that is not a struct")
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), Error> {
        unsupported("a row that is not a struct")
    }
    fn serialize_none(self) -> Result<(), Error> {
        unsupported("a row that is not a struct")
    }
    fn serialize_some<T: ?Sized + Serialize>(self, v: &T) -> Result<(), Error> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Error> {
        unsupported("a row that is not a struct")
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Error> {
        unsupported("a row that is not a struct")
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result<(), Error> {
        unsupported("a row that is not a struct")
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(self, _: &'static str, v: &T) -> Result<(), Error> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(self, _: &'static str, _: u32, _: &'static str, _: &T) -> Result<(), Error> {
        unsupported("a row that is not a struct")
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Error> {
        unsupported("a row that is not a struct")
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Error> {
        unsupported("a row that is not a struct")
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeTupleStruct, Error> {
        unsupported("a row that is not a struct")
    }
    fn serialize_tuple_variant(self, _: &'static str, _: u32, _: &'static str, _: usize) -> Result<Self::SerializeTupleVariant, Error> {
        unsupported("a row that is not a struct")
    }
    fn serialize_struct_variant(self, _: &'static str, _: u32, _: &'static str, _: usize) -> Result<Self::SerializeStructVariant, Error> {
        unsupported("a row that is not a struct")
    }
}

impl ser::SerializeStruct for &mut RowSer {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, key: &'static str, value: &T) -> Result<(), Error> {
        let cell = value.serialize(CellSer).map_err(|e| Error(format!("field `{key}`: {e}")))?;
        self.fields.push((key.to_string(), cell));
        Ok(())
    }
    fn end(self) -> Result<(), Error> {
        Ok(())
    }
}

impl ser::SerializeMap for &mut RowSer {
    type Ok = ();
    type Error = Error;
    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> Result<(), Error> {
        match key.serialize(CellSer)? {
            Cell::Str(s) => {
                self.key = Some(s);
                Ok(())
            }
            other => Err(Error(format!("a field name must be a string, not {}", other.kind()))),
        }
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Error> {
        let key = self.key.take().ok_or_else(|| Error("a map value without a key".into()))?;
        let cell = value.serialize(CellSer).map_err(|e| Error(format!("field `{key}`: {e}")))?;
        self.fields.push((key, cell));
        Ok(())
    }
    fn end(self) -> Result<(), Error> {
        Ok(())
    }
}

fn row_cells<T: Serialize>(row: &T) -> Result<Vec<(String, Cell)>> {
    let mut s = RowSer::default();
    row.serialize(&mut s).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(s.fields)
}

/// Builds one typed column from its cells; the first non-null cell fixes the type.
fn column(name: &str, cells: Vec<Cell>) -> Result<Column> {
    let kind = cells.iter().find(|c| **c != Cell::Null).map_or("null", Cell::kind);
    macro_rules! typed {
        ($variant:ident, $t:ty) => {{
            let v: Vec<Option<$t>> = cells
                .into_iter()
                .enumerate()
                .map(|(i, c)| match c {
                    Cell::$variant(x) => Ok(Some(x)),
                    Cell::Null => Ok(None),
                    other => bail!("column `{name}`, row {i}: a {} among {} values", other.kind(), kind),
                })
                .collect::<Result<_>>()?;
            Column::new(name.into(), v)
        }};
    }
    Ok(match kind {
        "bool" => typed!(Bool, bool),
        // polars builds no 8/16-bit columns from vectors here: they widen to 32 bits.
        "u8" | "u16" => {
            let cells = cells.into_iter().map(|c| match c { Cell::U8(x) => Cell::U32(x.into()), Cell::U16(x) => Cell::U32(x.into()), o => o }).collect::<Vec<_>>();
            return column(name, cells);
        }
        "u32" => typed!(U32, u32),
        "u64" => typed!(U64, u64),
        "i8" | "i16" => {
            let cells = cells.into_iter().map(|c| match c { Cell::I8(x) => Cell::I32(x.into()), Cell::I16(x) => Cell::I32(x.into()), o => o }).collect::<Vec<_>>();
            return column(name, cells);
        }
        "i32" => typed!(I32, i32),
        "i64" => typed!(I64, i64),
        "f32" => typed!(F32, f32),
        "f64" => typed!(F64, f64),
        "string" => typed!(Str, String),
        // All null: a string column of nulls (the type a reader of an all-missing field expects least harm from).
        _ => Column::new(name.into(), vec![None::<String>; cells.len()]),
    })
}

/// A DataFrame with one row per element of `rows` and one column per field, in field order. Every
/// row must have the same fields in the same order (an error names the first row that differs);
/// zero rows give an empty frame without columns.
pub fn to_df<T: Serialize>(rows: &[T]) -> Result<DataFrame> {
    let Some(first) = rows.first() else { return Ok(DataFrame::empty()) };
    let names: Vec<String> = row_cells(first).context("row 0")?.into_iter().map(|(n, _)| n).collect();
    let mut cols: Vec<Vec<Cell>> = vec![Vec::with_capacity(rows.len()); names.len()];
    for (i, r) in rows.iter().enumerate() {
        let cells = row_cells(r).with_context(|| format!("row {i}"))?;
        let got: Vec<&str> = cells.iter().map(|(n, _)| n.as_str()).collect();
        anyhow::ensure!(got == names, "row {i} has fields {got:?}, row 0 has {names:?}");
        for (k, (_, c)) in cells.into_iter().enumerate() {
            cols[k].push(c);
        }
    }
    let columns = names.iter().zip(cols).map(|(n, c)| column(n, c)).collect::<Result<Vec<_>>>()?;
    Ok(DataFrame::new_infer_height(columns)?)
}

/// [`to_df`], but zero rows still give the columns (names and types) of `T::default()`, with no
/// rows: a result table keeps its header when nothing matched. A field that is `None` by default
/// has no type to show and becomes an all-null String column in that empty frame.
pub fn to_df_with_header<T: Serialize + Default>(rows: &[T]) -> Result<DataFrame> {
    if rows.is_empty() {
        return Ok(to_df(&[T::default()])?.clear());
    }
    to_df(rows)
}

/// The cell at row `i` of a column, typed as polars stores it.
fn cell_at(col: &Column, i: usize) -> Result<Cell> {
    use polars::prelude::AnyValue as A;
    Ok(match col.get(i)? {
        A::Null => Cell::Null,
        A::Boolean(b) => Cell::Bool(b),
        A::UInt8(x) => Cell::U8(x),
        A::UInt16(x) => Cell::U16(x),
        A::UInt32(x) => Cell::U32(x),
        A::UInt64(x) => Cell::U64(x),
        A::Int8(x) => Cell::I8(x),
        A::Int16(x) => Cell::I16(x),
        A::Int32(x) => Cell::I32(x),
        A::Int64(x) => Cell::I64(x),
        A::Float32(x) => Cell::F32(x),
        A::Float64(x) => Cell::F64(x),
        A::String(x) => Cell::Str(x.to_string()),
        A::StringOwned(x) => Cell::Str(x.to_string()),
        other => bail!("column `{}`: cells of type {} cannot be read into a row", col.name(), other.dtype()),
    })
}

impl<'de> serde::Deserializer<'de> for Cell {
    type Error = serde::de::value::Error;
    fn deserialize_any<V: serde::de::Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        match self {
            Cell::Null => v.visit_none(),
            Cell::Bool(x) => v.visit_bool(x),
            Cell::U8(x) => v.visit_u8(x),
            Cell::U16(x) => v.visit_u16(x),
            Cell::U32(x) => v.visit_u32(x),
            Cell::U64(x) => v.visit_u64(x),
            Cell::I8(x) => v.visit_i8(x),
            Cell::I16(x) => v.visit_i16(x),
            Cell::I32(x) => v.visit_i32(x),
            Cell::I64(x) => v.visit_i64(x),
            Cell::F32(x) => v.visit_f32(x),
            Cell::F64(x) => v.visit_f64(x),
            Cell::Str(x) => v.visit_string(x),
        }
    }
    fn deserialize_option<V: serde::de::Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        match self {
            Cell::Null => v.visit_none(),
            other => v.visit_some(other),
        }
    }
    fn deserialize_enum<V: serde::de::Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Self::Error> {
        match self {
            Cell::Str(s) => serde::de::IntoDeserializer::<Self::Error>::into_deserializer(s).deserialize_enum(name, variants, v),
            other => Err(serde::de::Error::custom(format!("expected a variant name of {name}, found a {}", other.kind()))),
        }
    }
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf unit unit_struct
        newtype_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

impl<'de> serde::de::IntoDeserializer<'de, serde::de::value::Error> for Cell {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

/// The rows of `df` as structs: the inverse of [`to_df`]. Columns are matched to fields by name
/// (extra columns are ignored); a missing column or a cell of the wrong type names the row and
/// the column. Integer widths convert where the value fits (a UInt32 column into an `i64` field).
pub fn from_df<T: serde::de::DeserializeOwned>(df: &DataFrame) -> Result<Vec<T>> {
    let cols = df.columns();
    (0..df.height())
        .map(|i| {
            let cells = cols.iter().map(|c| Ok((c.name().to_string(), cell_at(c, i)?))).collect::<Result<Vec<_>>>()?;
            let de = serde::de::value::MapDeserializer::<_, serde::de::value::Error>::new(cells.into_iter());
            T::deserialize(de).map_err(|e| anyhow::anyhow!("table row {i}: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use polars::prelude::DataType;
    use serde::Serialize;

    #[derive(Serialize, serde::Deserialize, Debug, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Kind {
        PromptLast,
        GenAvg,
    }

    #[derive(Serialize)]
    struct Inner {
        n: u64,
    }

    #[derive(Serialize)]
    struct Row {
        layer: u32,
        name: String,
        v: f64,
        ok: bool,
        kind: Kind,
        p: Option<f32>,
        #[serde(flatten)]
        inner: Inner,
    }

    #[test]
    fn types_order_and_nulls() {
        let df = to_df(&[
            Row { layer: 1, name: "a".into(), v: 0.5, ok: true, kind: Kind::PromptLast, p: None, inner: Inner { n: 7 } },
            Row { layer: 2, name: "b".into(), v: -1.0, ok: false, kind: Kind::GenAvg, p: Some(0.25), inner: Inner { n: 9 } },
        ])
        .unwrap();
        let names: Vec<&str> = df.get_column_names().iter().map(|s| s.as_str()).collect();
        assert_eq!(names, ["layer", "name", "v", "ok", "kind", "p", "n"]);
        let dt: Vec<DataType> = df.dtypes();
        assert_eq!(
            dt,
            [DataType::UInt32, DataType::String, DataType::Float64, DataType::Boolean, DataType::String, DataType::Float32, DataType::UInt64]
        );
        assert_eq!(df.column("kind").unwrap().str().unwrap().get(1), Some("gen_avg"));
        assert_eq!(df.column("p").unwrap().f32().unwrap().get(0), None);
        assert_eq!(df.column("p").unwrap().f32().unwrap().get(1), Some(0.25));
        assert_eq!(df.column("v").unwrap().f64().unwrap().get(1), Some(-1.0));
        assert_eq!(df.column("n").unwrap().u64().unwrap().get(0), Some(7));
    }

    #[test]
    fn from_df_inverts_to_df() {
        #[derive(Serialize, serde::Deserialize, Debug, PartialEq)]
        struct R {
            layer: i64,
            name: String,
            v: f64,
            ok: bool,
            kind: Kind,
            p: Option<f32>,
        }
        let rows = vec![
            R { layer: -1, name: "a".into(), v: f64::NAN, ok: true, kind: Kind::GenAvg, p: None },
            R { layer: 4, name: "b".into(), v: 2.5, ok: false, kind: Kind::PromptLast, p: Some(0.5) },
        ];
        let back: Vec<R> = from_df(&to_df(&rows).unwrap()).unwrap();
        assert!(back[0].v.is_nan());
        assert_eq!(back[1], rows[1]);
        assert_eq!((back[0].layer, back[0].kind == Kind::GenAvg, back[0].p), (-1, true, None));
        // A missing column is named.
        let df = to_df(&rows).unwrap().drop("name").unwrap();
        let e = format!("{:#}", from_df::<R>(&df).unwrap_err());
        assert!(e.contains("row 0") && e.contains("name"), "{e}");
    }

    #[test]
    fn empty_rows_keep_the_header() {
        #[derive(Serialize, Default)]
        struct R {
            layer: i64,
            name: String,
            v: f64,
            n: u32,
            ok: bool,
        }
        let df = to_df_with_header::<R>(&[]).unwrap();
        assert_eq!(df.shape(), (0, 5));
        assert_eq!(df.dtypes(), [DataType::Int64, DataType::String, DataType::Float64, DataType::UInt32, DataType::Boolean]);
        let df = to_df_with_header(&[R { layer: -1, name: "a".into(), v: 0.5, n: 3, ok: true }]).unwrap();
        assert_eq!(df.shape(), (1, 5));
        assert_eq!(df.column("layer").unwrap().i64().unwrap().get(0), Some(-1));
    }

    #[test]
    fn bad_rows_are_named() {
        #[derive(Serialize)]
        struct Nested {
            xs: Vec<u32>,
        }
        let e = format!("{:#}", to_df(&[Nested { xs: vec![1] }]).unwrap_err());
        assert!(e.contains("row 0") && e.contains("field `xs`") && e.contains("sequence"), "{e}");
        let e = format!("{:#}", to_df(&[1u32]).unwrap_err());
        assert!(e.contains("not a struct"), "{e}");
        assert_eq!(to_df::<Row>(&[]).unwrap().shape(), (0, 0));
    }
}
