//! The AMX tile configuration shared by the tile kernels (`model::bf16`, `model::q8_packed`).
//!
//! Only used at `SimdLevel::Amx`, which `base::cpu` grants when CPUID lists AMX-TILE, AMX-BF16
//! and AMX-INT8 and the kernel allowed the process the tile data (`amx_permitted`).
use std::arch::asm;

/// A 64-byte tile configuration, palette 1 (Intel SDM, `LDTILECFG`): byte 0 the palette,
/// bytes 16..32 each tile's bytes per row (u16, little-endian), bytes 48..56 each tile's rows.
/// A tile given `(0, 0)` is left unconfigured.
#[repr(C, align(64))]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct TileConfig([u8; 64]);

impl TileConfig {
    /// `tiles[t]` = (bytes per row, rows) of `tmm{t}`; at most 64 bytes and 16 rows each.
    pub(crate) fn new(tiles: [(usize, usize); 8]) -> Self {
        let mut b = [0u8; 64];
        b[0] = 1;
        for (t, (colsb, rows)) in tiles.into_iter().enumerate() {
            debug_assert!(colsb <= 64 && rows <= 16, "tmm{t}: {colsb} bytes x {rows} rows exceeds a tile");
            b[16 + 2 * t..18 + 2 * t].copy_from_slice(&(colsb as u16).to_le_bytes());
            b[48 + t] = rows as u8;
        }
        TileConfig(b)
    }

    /// `ldtilecfg`: configures the tiles and zeroes them.
    ///
    /// # Safety
    /// The CPU must have AMX and the process the tile permission (`SimdLevel::Amx`).
    pub(crate) unsafe fn load(&self) {
        asm!("ldtilecfg [{}]", in(reg) self.0.as_ptr(), options(nostack, readonly));
    }
}

/// `tilerelease`: returns the tiles to their initial state, so that the thread's state saves
/// stay small.
///
/// # Safety
/// As [`TileConfig::load`].
pub(crate) unsafe fn release() {
    asm!("tilerelease", options(nostack, nomem));
}

/// `f(r0, rows)` for each chunk of at most 16 of `m` input rows, in order, with `config(rows)`
/// loaded before the first chunk and again whenever a chunk's row count changes (only the last
/// chunk's can), and the tiles released after the last chunk.
///
/// # Safety
/// As [`TileConfig::load`]; `f` may use the tiles as `config` sets them up.
pub(crate) unsafe fn for_row_chunks(m: usize, config: impl Fn(usize) -> TileConfig, mut f: impl FnMut(usize, usize)) {
    let mut current = 0;
    let mut r0 = 0;
    while r0 < m {
        let rows = 16.min(m - r0);
        if rows != current {
            config(rows).load();
            current = rows;
        }
        f(r0, rows);
        r0 += rows;
    }
    release();
}

#[cfg(test)]
mod tests {
    use super::TileConfig;

    #[test]
    fn config_bytes_follow_the_palette_1_layout() {
        let c = TileConfig::new([(64, 16), (64, 3), (0, 0), (0, 0), (32, 16), (32, 3), (64, 8), (64, 8)]);
        let b = c.0;
        assert_eq!(b[0], 1, "palette");
        assert!(b[1..16].iter().all(|&x| x == 0), "start_row and reserved bytes");
        let colsb: Vec<u16> = (0..8).map(|t| u16::from_le_bytes([b[16 + 2 * t], b[17 + 2 * t]])).collect();
        assert_eq!(colsb, [64, 64, 0, 0, 32, 32, 64, 64]);
        assert!(b[32..48].iter().all(|&x| x == 0), "tmm8..15 bytes per row");
        assert_eq!(&b[48..56], &[16, 3, 0, 0, 16, 3, 8, 8]);
        assert!(b[56..].iter().all(|&x| x == 0), "tmm8..15 rows");
        assert_eq!(std::mem::align_of::<TileConfig>(), 64);
    }
}
