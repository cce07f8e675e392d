//! Every GGUF file the kit reads (models, their tokenizers, control vectors) goes through
//! [`read_gguf`]: a bounds-checked walk of the header first, then candle's parser.
//!
//! candle's `gguf_file::Content::read` checks string and array lengths against the file size, but
//! panics on some corrupt headers: `general.alignment = 0` divides by zero, and tensor dimensions
//! whose product overflows panic later when a tensor's size is computed. The walk here refuses
//! those (and every count, length, dimension and data extent that does not fit the file) with an
//! error naming the file, the field and its byte offset, before candle or the kit allocates or
//! computes anything from them.
use anyhow::{anyhow, bail, ensure, Context, Result};
use candle_core::quantized::{gguf_file, GgmlDType};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// GGUF allows at most 4 dimensions per tensor (GGML_MAX_DIMS).
const MAX_DIMS: u64 = 4;
/// Nesting depth of metadata arrays candle accepts.
const MAX_DEPTH: usize = 64;

/// Opens `path`, checks its header (see the module docs) and parses it with candle. The file is
/// returned for reading tensors; every tensor's data lies inside it.
pub fn read_gguf(path: &Path) -> Result<(gguf_file::Content, File)> {
    let mut f = File::open(path).with_context(|| format!("opening GGUF {}", path.display()))?;
    let len = f.metadata().with_context(|| format!("reading the size of {}", path.display()))?.len();
    check_header(&mut f, len).with_context(|| format!("{}: not a readable GGUF file", path.display()))?;
    f.seek(SeekFrom::Start(0))?;
    let content = gguf_file::Content::read(&mut f).map_err(|e| anyhow!("{}: not a readable GGUF file: {e}", path.display()))?;
    Ok((content, f))
}

/// Reads tensor `name` of `content` (from [`read_gguf`] on `path`) from `file` onto `device`.
/// A tensor without elements is an error: candle would view its empty buffer's dangling pointer
/// as the element type, which is undefined behaviour (debug builds abort the process).
pub fn read_tensor(
    content: &gguf_file::Content,
    file: &mut File,
    name: &str,
    device: &candle_core::Device,
    path: &Path,
) -> Result<candle_core::quantized::QTensor> {
    let info = content.tensor_infos.get(name).with_context(|| format!("{}: no tensor {name}", path.display()))?;
    ensure!(
        info.shape.dims().iter().all(|&d| d > 0),
        "{}: tensor {name} has shape {:?}, without elements",
        path.display(),
        info.shape.dims()
    );
    content.tensor(file, name, device).map_err(|e| anyhow!("{}: reading tensor {name}: {e}", path.display()))
}

/// The ggml dtype numbered `id` in a GGUF tensor info (candle's numbering).
fn dtype_of(id: u32) -> Option<GgmlDType> {
    use GgmlDType::*;
    Some(match id {
        0 => F32,
        1 => F16,
        2 => Q4_0,
        3 => Q4_1,
        6 => Q5_0,
        7 => Q5_1,
        8 => Q8_0,
        9 => Q8_1,
        10 => Q2K,
        11 => Q3K,
        12 => Q4K,
        13 => Q5K,
        14 => Q6K,
        15 => Q8K,
        30 => BF16,
        _ => return None,
    })
}

/// A reader that knows its offset and the file size, so every length can be checked against
/// what is left before it is believed.
struct Walk<R> {
    r: R,
    pos: u64,
    len: u64,
    /// Length prefixes are u32 in GGUF v1, u64 later.
    v1: bool,
}

impl<R: Read + Seek> Walk<R> {
    fn left(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }
    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        ensure!(self.left() >= N as u64, "the file ends inside {what} at byte {} (file size {})", self.pos, self.len);
        let mut b = [0u8; N];
        self.r.read_exact(&mut b).with_context(|| format!("reading {what} at byte {}", self.pos))?;
        self.pos += N as u64;
        Ok(b)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes::<4>(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes::<8>(what)?))
    }
    fn length(&mut self, what: &str) -> Result<u64> {
        if self.v1 {
            Ok(self.u32(what)? as u64)
        } else {
            self.u64(what)
        }
    }
    fn skip(&mut self, n: u64, what: &str) -> Result<()> {
        ensure!(n <= self.left(), "{what} at byte {} claims {n} bytes, the file has {} left", self.pos, self.left());
        self.r.seek(SeekFrom::Current(n as i64))?;
        self.pos += n;
        Ok(())
    }
    /// A string: returned when short (keys), skipped otherwise.
    fn string(&mut self, what: &str) -> Result<Option<String>> {
        let at = self.pos;
        let n = self.length(what)?;
        ensure!(n <= self.left(), "{what} at byte {at} claims {n} bytes, the file has {} left", self.left());
        if n <= 256 {
            let mut b = vec![0u8; n as usize];
            self.r.read_exact(&mut b)?;
            self.pos += n;
            Ok(Some(String::from_utf8_lossy(&b).trim_end_matches('\0').to_string()))
        } else {
            self.skip(n, what)?;
            Ok(None)
        }
    }
    /// The smallest encoding of a value of type `t`.
    fn min_size(&self, t: u32) -> u64 {
        match t {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => {
                if self.v1 {
                    4
                } else {
                    8
                }
            }
            _ => 4 + if self.v1 { 4 } else { 8 },
        }
    }
    /// One metadata value of type `t`; integers are returned (for `general.alignment`).
    fn value(&mut self, t: u32, key: &str, depth: usize) -> Result<Option<i128>> {
        ensure!(depth <= MAX_DEPTH, "metadata {key}: arrays nested deeper than {MAX_DEPTH}");
        Ok(match t {
            0 => Some(self.bytes::<1>(key)?[0] as i128),
            1 => Some(self.bytes::<1>(key)?[0] as i8 as i128),
            2 => Some(u16::from_le_bytes(self.bytes::<2>(key)?) as i128),
            3 => Some(i16::from_le_bytes(self.bytes::<2>(key)?) as i128),
            4 => Some(self.u32(key)? as i128),
            5 => Some(self.u32(key)? as i32 as i128),
            6 | 7 => {
                self.skip(self.min_size(t), key)?;
                None
            }
            10 => Some(self.u64(key)? as i128),
            11 => Some(self.u64(key)? as i64 as i128),
            12 => {
                self.skip(8, key)?;
                None
            }
            8 => {
                self.string(&format!("metadata {key}: string"))?;
                None
            }
            9 => {
                let at = self.pos;
                let et = self.u32(key)?;
                ensure!(et <= 12, "metadata {key}: array of unknown value type {et} at byte {at}");
                let n = self.length(key)?;
                let need = n.saturating_mul(self.min_size(et));
                ensure!(
                    need <= self.left(),
                    "metadata {key}: array of {n} elements at byte {at} needs at least {need} bytes, the file has {} left",
                    self.left()
                );
                match et {
                    // Fixed-size elements: one skip.
                    0..=7 | 10..=12 => self.skip(need, key)?,
                    _ => {
                        for _ in 0..n {
                            self.value(et, key, depth + 1)?;
                        }
                    }
                }
                None
            }
            other => bail!("metadata {key}: unknown value type {other}"),
        })
    }
}

/// Walks the header of a GGUF file of `len` bytes: magic, version, counts, every metadata entry,
/// every tensor info (at most 4 dimensions whose product fits, a known dtype), `general.alignment`
/// (a power of two), and checks that each tensor's data lies inside the file.
pub fn check_header<R: Read + Seek>(r: R, len: u64) -> Result<()> {
    let mut w = Walk { r: BufReader::new(r), pos: 0, len, v1: false };
    let magic = w.u32("the magic number")?;
    ensure!(magic == 0x4655_4747 || magic == 0x4747_5546, "bad magic number {magic:#010x} (a GGUF file starts with \"GGUF\")");
    let version = w.u32("the version")?;
    ensure!((1..=3).contains(&version), "unsupported GGUF version {version} (1, 2 and 3 are read)");
    w.v1 = version == 1;
    let n_tensors = w.length("the tensor count")?;
    let n_kv = w.length("the metadata count")?;
    // Each entry takes at least a length prefix, a type and a byte (metadata) or a name prefix,
    // n_dims, dtype and offset (tensor infos).
    let p = if w.v1 { 4u64 } else { 8 };
    let need = n_kv.saturating_mul(p + 5).saturating_add(n_tensors.saturating_mul(p + 16));
    ensure!(
        need <= w.left(),
        "the header declares {n_tensors} tensors and {n_kv} metadata entries, which need at least {need} bytes; the file has {}",
        w.len
    );
    let mut alignment = 32u64;
    for i in 0..n_kv {
        let at = w.pos;
        let key = w.string(&format!("the key of metadata entry {i}"))?.unwrap_or_else(|| format!("#{i}"));
        let t = w.u32(&key)?;
        let v = w.value(t, &key, 0).with_context(|| format!("metadata entry {i} ({key}) at byte {at}"))?;
        // The integer types candle reads `general.alignment` from; others leave its default.
        if key == "general.alignment" && matches!(t, 0..=5) {
            let a = v.unwrap_or(32);
            ensure!(
                a > 0 && (a as u64).is_power_of_two(),
                "general.alignment is {a} (at byte {at}); it must be a positive power of two"
            );
            alignment = a as u64;
        }
    }
    let mut extents = Vec::with_capacity(n_tensors.min(1 << 20) as usize);
    for i in 0..n_tensors {
        let at = w.pos;
        let name = w.string(&format!("the name of tensor {i}"))?.unwrap_or_else(|| format!("#{i}"));
        let nd = w.u32(&name)? as u64;
        ensure!(nd <= MAX_DIMS, "tensor {name} (info at byte {at}) has {nd} dimensions; GGUF allows at most {MAX_DIMS}");
        let mut elems: u64 = 1;
        let mut dims = Vec::with_capacity(nd as usize);
        for _ in 0..nd {
            let d = if w.v1 { w.u32(&name)? as u64 } else { w.u64(&name)? };
            dims.push(d);
            elems = elems.checked_mul(d).filter(|&e| e <= usize::MAX as u64).with_context(|| {
                format!("tensor {name} (info at byte {at}): dimensions {dims:?} overflow the element count")
            })?;
        }
        let dt = w.u32(&name)?;
        let dtype = dtype_of(dt).with_context(|| format!("tensor {name} (info at byte {at}) has unknown ggml dtype {dt}"))?;
        let (block, tsize) = (dtype.block_size() as u64, dtype.type_size() as u64);
        ensure!(
            elems % block == 0,
            "tensor {name}: {elems} elements ({dims:?}) are not whole blocks of {block} for {dtype:?}"
        );
        let bytes = (elems / block).checked_mul(tsize).with_context(|| format!("tensor {name}: size overflows"))?;
        let offset = w.u64(&name)?;
        extents.push((name, offset, bytes));
    }
    let data = w.pos.div_ceil(alignment).saturating_mul(alignment);
    for (name, offset, bytes) in extents {
        let end = data.checked_add(offset).and_then(|s| s.checked_add(bytes));
        match end {
            Some(end) if end <= len => {}
            _ => bail!(
                "file is truncated or corrupt ({len} bytes): tensor {name} ({bytes} bytes at data offset {offset}) ends past the end of the file"
            ),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn kv_u32(buf: &mut Vec<u8>, key: &str, v: u32) {
        buf.extend((key.len() as u64).to_le_bytes());
        buf.extend(key.as_bytes());
        buf.extend(4u32.to_le_bytes());
        buf.extend(v.to_le_bytes());
    }

    /// A v3 GGUF with the given metadata (u32 values) and one F32 tensor of `dims`.
    fn gguf(kvs: &[(&str, u32)], dims: &[u64], data: usize) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend((kvs.len() as u64).to_le_bytes());
        for (k, v) in kvs {
            kv_u32(&mut b, k, *v);
        }
        b.extend(1u64.to_le_bytes());
        b.extend(b"t");
        b.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(0u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        while b.len() % 32 != 0 {
            b.push(0);
        }
        b.extend(vec![0u8; data]);
        b
    }

    fn check(b: &[u8]) -> Result<()> {
        check_header(Cursor::new(b), b.len() as u64)
    }

    #[test]
    fn a_valid_file_passes_and_candle_reads_it() {
        let b = gguf(&[("general.alignment", 32)], &[4, 2], 32);
        check(&b).unwrap();
        let c = gguf_file::Content::read(&mut Cursor::new(&b)).unwrap();
        assert_eq!(c.tensor_infos["t"].shape.dims(), &[2, 4]);
    }

    /// Regression (fuzzing): candle divides by `general.alignment`; 0 panicked inside candle.
    #[test]
    fn zero_alignment_is_refused() {
        let e = format!("{:#}", check(&gguf(&[("general.alignment", 0)], &[4], 16)).unwrap_err());
        assert!(e.contains("general.alignment is 0"), "{e}");
        let e = format!("{:#}", check(&gguf(&[("general.alignment", 24)], &[4], 16)).unwrap_err());
        assert!(e.contains("power of two"), "{e}");
    }

    /// Regression (fuzzing): dimensions whose product overflows panicked in the kit's and
    /// candle's size computations.
    #[test]
    fn overflowing_dimensions_are_refused() {
        let e = format!("{:#}", check(&gguf(&[], &[1 << 40, 1 << 40], 16)).unwrap_err());
        assert!(e.contains("overflow the element count"), "{e}");
    }

    /// Regression (fuzzing): a tensor offset near u64::MAX overflowed the kit's extent sum.
    #[test]
    fn data_past_the_end_is_refused() {
        let mut b = gguf(&[], &[4], 16);
        check(&b).unwrap();
        // The offset field: header (4+4+8+8), name (8+1), n_dims (4), one dim (8), dtype (4).
        let field = 4 + 4 + 8 + 8 + 8 + 1 + 4 + 8 + 4;
        assert_eq!(u64::from_le_bytes(b[field..field + 8].try_into().unwrap()), 0);
        b[field..field + 8].copy_from_slice(&(u64::MAX - 1).to_le_bytes());
        let e = format!("{:#}", check(&b).unwrap_err());
        assert!(e.contains("ends past the end of the file"), "{e}");
        // Truncated data.
        let b = gguf(&[], &[4], 15);
        assert!(format!("{:#}", check(&b).unwrap_err()).contains("tensor t"));
    }

    #[test]
    fn counts_and_lengths_past_the_file_are_refused() {
        let mut b = gguf(&[("a", 1)], &[4], 16);
        b[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes()); // metadata count
        assert!(format!("{:#}", check(&b).unwrap_err()).contains("metadata entries"));
        let mut b = gguf(&[("a", 1)], &[4], 16);
        b[24..32].copy_from_slice(&(1u64 << 50).to_le_bytes()); // the key's length
        assert!(format!("{:#}", check(&b).unwrap_err()).contains("claims"));
        assert!(check(b"GGU").is_err());
        assert!(check(b"").is_err());
    }
}
