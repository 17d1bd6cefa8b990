//! Quantised weights (GGUF Q4_0, Q4_1, Q8_0, F16, F32) and the matrix products of the chat
//! runtime.
//!
//! Why our own kernels: candle 0.11 has no SIMD dot product for Q4_1 on x86 (SmolLM2 ships Q4_1)
//! and runs ~0.23x llama.cpp here. We follow ggml's scheme exactly: activations are quantised to
//! Q8_1 (for Q4_x) or Q8_0 (for Q8_0) blocks of 32, with ggml's rounding and fp16 scales, so the
//! numbers match llama.cpp's; the integer dot products use AVX2 where the CPU has it.

use crate::error::{Error, Result};
use half::f16;

/// Elements per quantisation block.
pub const QK: usize = 32;

/// The weight formats the chat runtime executes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
}

impl WType {
    /// Bytes per block of `block_len()` elements.
    pub fn block_bytes(self) -> usize {
        match self {
            WType::F32 => 4,
            WType::F16 => 2,
            WType::Q4_0 => 18,
            WType::Q4_1 => 20,
            WType::Q8_0 => 34,
        }
    }

    /// f16 values at the head of each block that `QMatrix` also keeps apart for the decode
    /// kernels: Q4_1's scale and minimum, Q8_0's scale; none for the others.
    fn heads_per_block(self) -> usize {
        match self {
            WType::Q4_1 => 2,
            WType::Q8_0 => 1,
            _ => 0,
        }
    }

    /// Elements per block.
    pub fn block_len(self) -> usize {
        match self {
            WType::F32 | WType::F16 => 1,
            _ => QK,
        }
    }

    /// Maps a candle GGML dtype onto ours; other quantisations are rejected by name.
    pub fn from_ggml(t: candle_core::quantized::GgmlDType) -> Option<WType> {
        use candle_core::quantized::GgmlDType as G;
        Some(match t {
            G::F32 => WType::F32,
            G::F16 => WType::F16,
            G::Q4_0 => WType::Q4_0,
            G::Q4_1 => WType::Q4_1,
            G::Q8_0 => WType::Q8_0,
            _ => return None,
        })
    }
}

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// A weight matrix of `rows` x `cols` (row-major, each row `cols` elements) in its GGUF encoding.
#[derive(Debug, Clone)]
pub struct QMatrix {
    pub wtype: WType,
    pub rows: usize,
    pub cols: usize,
    data: Vec<u8>,
    row_bytes: usize,
    /// Q4_1 and Q8_0: each row's block scales (and Q4_1 minimums) again, contiguous —
    /// `[d_0 … d_nb-1, m_0 … m_nb-1]` as f16 bits — so the decode kernels load eight blocks'
    /// at once (4 bytes more per 20-byte Q4_1 block, 2 per 34-byte Q8_0 block).
    heads: Vec<u16>,
}

/// How far ahead (bytes) the decode kernels prefetch weights.
const PREFETCH: usize = 4096;

/// Activations quantised for one weight format: per row, blocks of (scale, sum*scale, 32 x i8).
#[derive(Clone)]
pub struct QActs {
    /// Per block: d (fp16-rounded).
    d: Vec<f32>,
    /// Per block: d * sum(qs) (fp16-rounded), used by the Q4_1 offset term.
    s: Vec<f32>,
    qs: Vec<i8>,
    blocks_per_row: usize,
    /// Rows kept in f32 for F32/F16 weights.
    f32_rows: Vec<f32>,
    cols: usize,
    /// Int8 blocks (for quantised weights) or f32 rows (for F32/F16 weights).
    int8: bool,
    /// Rows.
    n: usize,
    /// `s` transposed (block-major: `s_t[b * n + t]`), so the AVX-512 kernel sums the Q4_1
    /// offset terms of several rows in one vector (each lane in ggml's order).
    s_t: Vec<f32>,
}

impl QMatrix {
    /// Wraps raw GGUF bytes; the length must match the shape.
    pub fn new(wtype: WType, rows: usize, cols: usize, data: Vec<u8>) -> Result<QMatrix> {
        if !cols.is_multiple_of(wtype.block_len()) {
            return Err(Error::Invalid(format!(
                "{wtype:?} rows of {cols} elements are not a multiple of the block size {}",
                wtype.block_len()
            )));
        }
        let row_bytes = cols / wtype.block_len() * wtype.block_bytes();
        if data.len() != row_bytes * rows {
            return Err(Error::Invalid(format!(
                "tensor data is {} bytes, expected {} for {rows}x{cols} {wtype:?}",
                data.len(),
                row_bytes * rows
            )));
        }
        let per_block = wtype.heads_per_block();
        let nb = cols / wtype.block_len();
        let mut heads = Vec::with_capacity(rows * nb * per_block);
        if per_block > 0 {
            let bb = wtype.block_bytes();
            for row in data.chunks_exact(row_bytes) {
                for part in 0..per_block {
                    heads.extend(
                        row.chunks_exact(bb)
                            .map(|b| u16::from_le_bytes([b[2 * part], b[2 * part + 1]])),
                    );
                }
            }
        }
        Ok(QMatrix {
            wtype,
            rows,
            cols,
            data,
            row_bytes,
            heads,
        })
    }

    /// Bytes held.
    pub fn nbytes(&self) -> usize {
        self.data.len() + 2 * self.heads.len()
    }

    /// Asks the CPU to fetch rows `r..r + n` (and their `heads`) into cache: the decode
    /// kernels read four rows side by side, a pattern the hardware prefetcher follows poorly
    /// (measured: 25% slower without this).
    #[cfg(target_arch = "x86_64")]
    fn prefetch_rows(&self, r: usize, n: usize) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let hrow = 2 * self.heads_per_row();
        for (base, from, len) in [
            (self.data.as_ptr(), r * self.row_bytes, n * self.row_bytes),
            (self.heads.as_ptr() as *const u8, r * hrow, n * hrow),
        ] {
            for off in (from..from + len).step_by(64) {
                // SAFETY: a prefetch never faults, whatever the address.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(off) as *const i8) };
            }
        }
    }

    /// Asks the CPU to fetch the start of rows `rows` (what the decode kernels read before their
    /// own prefetching is under way): called before a thread waits at a barrier, so the wait
    /// brings in the next product's first weights (+2% decode speed, about the noise).
    pub fn prefetch_first(&self, rows: std::ops::Range<usize>) {
        #[cfg(target_arch = "x86_64")]
        {
            let n = rows.len().min(PREFETCH / self.row_bytes.max(1) + 1);
            self.prefetch_rows(rows.start, n);
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = rows;
    }

    /// Values of `heads` per row.
    fn heads_per_row(&self) -> usize {
        self.heads.len() / self.rows.max(1)
    }

    /// Row `r`'s part of `heads`.
    fn heads_of(&self, r: usize) -> &[u16] {
        let n = self.heads_per_row();
        &self.heads[r * n..(r + 1) * n]
    }

    /// Whether `acts` were quantised for this matrix (same width and encoding).
    fn suits(&self, acts: &QActs) -> bool {
        acts.int8 == self.wants_int8() && acts.cols == self.cols
    }

    fn row(&self, r: usize) -> &[u8] {
        &self.data[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// Decodes row `r` into `out` (used for embedding lookups).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let row = self.row(r);
        match self.wtype {
            WType::F32 => {
                for (o, c) in out.iter_mut().zip(row.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            WType::F16 => {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = f16_at(row, 2 * i);
                }
            }
            WType::Q8_0 => {
                for (b, blk) in row.chunks_exact(34).enumerate() {
                    let d = f16_at(blk, 0);
                    for j in 0..QK {
                        out[b * QK + j] = d * blk[2 + j] as i8 as f32;
                    }
                }
            }
            WType::Q4_0 | WType::Q4_1 => {
                let bb = self.wtype.block_bytes();
                for (b, blk) in row.chunks_exact(bb).enumerate() {
                    let d = f16_at(blk, 0);
                    let (m, qs) = if self.wtype == WType::Q4_1 {
                        (f16_at(blk, 2), &blk[4..20])
                    } else {
                        (-8.0 * d, &blk[2..18])
                    };
                    for j in 0..16 {
                        out[b * QK + j] = d * (qs[j] & 0x0f) as f32 + m;
                        out[b * QK + j + 16] = d * (qs[j] >> 4) as f32 + m;
                    }
                }
            }
        }
    }

    /// Whether this matrix multiplies int8 activation blocks (else f32 rows).
    fn wants_int8(&self) -> bool {
        !matches!(self.wtype, WType::F32 | WType::F16)
    }

    /// `acts` when they suit this matrix (same width and encoding: files may mix weight types
    /// between Q, K and V), else `x` quantised anew.
    pub fn reuse_acts<'a>(
        &self,
        acts: &'a QActs,
        x: &[f32],
        n: usize,
    ) -> std::borrow::Cow<'a, QActs> {
        if self.suits(acts) {
            std::borrow::Cow::Borrowed(acts)
        } else {
            std::borrow::Cow::Owned(self.quantize_acts(x, n))
        }
    }

    /// Quantises `n` rows of `x` (each `cols` long) the way this matrix's dot product expects.
    pub fn quantize_acts(&self, x: &[f32], n: usize) -> QActs {
        let cols = self.cols;
        debug_assert_eq!(x.len(), n * cols);
        match self.wtype {
            WType::F32 | WType::F16 => QActs {
                d: vec![],
                s: vec![],
                qs: vec![],
                blocks_per_row: 0,
                f32_rows: x.to_vec(),
                cols,
                int8: false,
                n,
                s_t: vec![],
            },
            _ => {
                let nb = cols / QK;
                let mut acts = QActs {
                    d: vec![0.0; n * nb],
                    s: vec![0.0; n * nb],
                    qs: vec![0; n * cols],
                    blocks_per_row: nb,
                    f32_rows: vec![],
                    cols,
                    int8: true,
                    n,
                    s_t: vec![],
                };
                for (b, (xb, qb)) in x
                    .chunks_exact(QK)
                    .zip(acts.qs.chunks_exact_mut(QK))
                    .enumerate()
                {
                    let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    // As ggml's AVX2 path: d = max/127, but the multiplier is 127/max.
                    let d = amax / 127.0;
                    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
                    let mut sum = 0i32;
                    for (q, v) in qb.iter_mut().zip(xb) {
                        // ggml's AVX path rounds half to even.
                        let r = (v * id).round_ties_even() as i32;
                        *q = r as i8;
                        sum += r;
                    }
                    acts.d[b] = f16::from_f32(d).to_f32();
                    acts.s[b] = f16::from_f32(d * sum as f32).to_f32();
                }
                if self.wtype == WType::Q4_1 {
                    acts.s_t = vec![0.0; n * nb];
                    for t in 0..n {
                        for b in 0..nb {
                            acts.s_t[b * n + t] = acts.s[t * nb + b];
                        }
                    }
                }
                acts
            }
        }
    }

    /// Dot products of weight row `r` with activation rows `t0..t0 + T`.
    #[inline]
    fn dots<const T: usize>(&self, r: usize, acts: &QActs, t0: usize) -> [f32; T] {
        assert!(self.suits(acts), "activations quantised for another matrix");
        let row = self.row(r);
        let nb = acts.blocks_per_row;
        match self.wtype {
            WType::Q4_1 => kernels::dot_q4_1::<T>(row, &acts.d, &acts.s, &acts.qs, nb, t0),
            WType::Q8_0 => kernels::dot_q8_0::<T>(row, &acts.d, &acts.qs, nb, t0),
            WType::Q4_0 => std::array::from_fn(|j| {
                let t = t0 + j;
                kernels::dot_q4_0(
                    row,
                    &acts.d[t * nb..(t + 1) * nb],
                    &acts.qs[t * nb * QK..(t + 1) * nb * QK],
                )
            }),
            WType::F32 | WType::F16 => std::array::from_fn(|j| {
                let x = &acts.f32_rows[(t0 + j) * acts.cols..(t0 + j + 1) * acts.cols];
                if self.wtype == WType::F32 {
                    row.chunks_exact(4)
                        .zip(x)
                        .map(|(c, v)| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * v)
                        .sum()
                } else {
                    (0..acts.cols).map(|k| f16_at(row, 2 * k) * x[k]).sum()
                }
            }),
        }
    }

    /// `out[t][r] = sum_k x[t][k] * W[r][k]` for `n` input rows: out is `n` x `rows`.
    pub fn matmul(&self, acts: &QActs, n: usize, out: &mut [f32]) {
        assert_eq!(out.len(), n * self.rows);
        // SAFETY: `out` holds `n * rows` values and is borrowed mutably here.
        unsafe { self.matmul_rows(acts, n, 0..self.rows, out.as_mut_ptr(), false) };
    }

    /// The weight rows `rows` of the product only (one thread's share), written to
    /// `out[t * self.rows + r]`; with `accumulate`, added to it instead (a fused residual
    /// connection). Each weight row is read once for all `n` input rows.
    ///
    /// # Safety
    /// `out` points to `n * self.rows` values, and no other thread accesses the entries of
    /// these rows while this runs.
    pub unsafe fn matmul_rows(
        &self,
        acts: &QActs,
        n: usize,
        rows: std::ops::Range<usize>,
        out: *mut f32,
        accumulate: bool,
    ) {
        assert!(rows.end <= self.rows);
        let put = |t: usize, r: usize, v: f32| {
            let o = out.add(t * self.rows + r);
            *o = if accumulate { *o + v } else { v };
        };
        let mut rows = rows;
        // Two weight rows at a time in the halves of 512-bit registers, up to 8 activation rows
        // per pass (same arithmetic per row as below, so the same numbers).
        #[cfg(target_arch = "x86_64")]
        // (Not for one activation row, a decode step: two weight rows at a time, in halves or
        // interleaved in 256-bit registers, measured slower there on Zen 4.)
        #[cfg(target_arch = "x86_64")]
        if n >= 2 && matches!(self.wtype, WType::Q4_1 | WType::Q8_0) && avx512::available() {
            let nb = acts.blocks_per_row;
            while rows.len() >= 2 {
                let r = rows.start;
                let (w0, w1) = (self.row(r), self.row(r + 1));
                let mut t0 = 0;
                while t0 < n {
                    let left = n - t0;
                    macro_rules! run {
                        ($t:literal) => {{
                            let (a, b) = if self.wtype == WType::Q4_1 {
                                avx512::q4_1_pair::<$t>(w0, w1, acts, nb, t0)
                            } else {
                                avx512::q8_0_pair::<$t>(w0, w1, acts, nb, t0)
                            };
                            for j in 0..$t {
                                put(t0 + j, r, a[j]);
                                put(t0 + j, r + 1, b[j]);
                            }
                            t0 += $t;
                        }};
                    }
                    match left {
                        8.. => run!(8),
                        4..=7 => run!(4),
                        2..=3 => run!(2),
                        _ => run!(1),
                    }
                }
                rows.start += 2;
            }
        }
        // A decode step: four weight rows at a time, their accumulation chains interleaved.
        #[cfg(target_arch = "x86_64")]
        if n == 1 && matches!(self.wtype, WType::Q4_1 | WType::Q8_0) && avx512::decode_available() {
            let nb = acts.blocks_per_row;
            assert!(self.suits(acts), "activations quantised for another matrix");
            // The four rows are read side by side, which the hardware prefetcher follows
            // poorly: ask for the rows `PREFETCH` bytes ahead.
            while rows.len() >= 4 {
                let r = rows.start;
                self.prefetch_rows(r + PREFETCH / self.row_bytes.max(1), 4);
                let w = [
                    self.row(r),
                    self.row(r + 1),
                    self.row(r + 2),
                    self.row(r + 3),
                ];
                let h = [0, 1, 2, 3].map(|j| self.heads_of(r + j));
                let v = avx512::decode_rows::<4>(self.wtype, w, h, acts, nb);
                for (j, v) in v.into_iter().enumerate() {
                    put(0, r + j, v);
                }
                rows.start += 4;
            }
        }
        // Four activation rows at a time share each unpacked weight block.
        let n4 = n / 4 * 4;
        for r in rows {
            for t in (0..n4).step_by(4) {
                for (j, v) in self.dots::<4>(r, acts, t).into_iter().enumerate() {
                    put(t + j, r, v);
                }
            }
            for t in n4..n {
                put(t, r, self.dots::<1>(r, acts, t)[0]);
            }
        }
    }
}

/// AVX-512 kernels (AVX512-BW, -VL, -VNNI, F16C), chosen at run time: two weight rows share
/// each instruction, one in each 256-bit half, with exactly ggml's per-row arithmetic (integer
/// dot products, then per block `acc = fma(d_w·d_a, float(dot), acc)`, the Q4_1 offset term
/// summed apart, the 8 lanes summed at the end).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{f16_at, QActs, WType, QK};
    use std::arch::x86_64::*;

    /// Whether this CPU runs them (checked once).
    pub fn available() -> bool {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512dq")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("f16c")
                && is_x86_feature_detected!("fma")
                && !["avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512vnni"]
                    .iter()
                    .any(|f| crate::lowp::feature_disabled(f))
        })
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// Each accumulator's two halves summed: the first weight row's results, the second's.
    #[inline(always)]
    unsafe fn row_sums<const T: usize>(acc: &[__m512; T]) -> ([f32; T], [f32; T]) {
        (
            std::array::from_fn(|j| hsum(_mm512_castps512_ps256(acc[j]))),
            std::array::from_fn(|j| hsum(_mm512_extractf32x8_ps(acc[j], 1))),
        )
    }

    /// [a × 8, b × 8].
    #[inline(always)]
    unsafe fn halves(a: f32, b: f32) -> __m512 {
        _mm512_insertf32x8(_mm512_set1_ps(a), _mm256_set1_ps(b), 1)
    }

    /// Whether this CPU also runs the one-token kernels (`q4_1_rows`, `q8_0_rows`), which
    /// unpack nibbles with GFNI (checked once).
    pub fn decode_available() -> bool {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            available()
                && is_x86_feature_detected!("gfni")
                && !crate::lowp::feature_disabled("gfni")
        })
    }

    /// Blocks whose scales the one-token kernels stage at a time (on the stack).
    const STAGE: usize = 64;

    /// `R` Q4_1 or Q8_0 weight rows against activation row 0 (a decode step). Each row keeps
    /// ggml's arithmetic and order (`vec_dot_q4_1_q8_1`, `vec_dot_q8_0_q8_0`): integer block
    /// sums, `acc = fma(d_w·d_a, float(sum), acc)` block after block, Q4_1's offset terms
    /// `m_w·s_a` summed apart. What is new is the schedule: the `R` rows' accumulation chains
    /// interleave (one chain alone waits on the FMA latency), eight blocks' scales come from the
    /// rows' `heads` in one load and one multiply, and GFNI splits a Q4_1 block's nibbles in one
    /// instruction.
    pub fn decode_rows<const R: usize>(
        wtype: WType,
        w: [&[u8]; R],
        heads: [&[u16]; R],
        acts: &QActs,
        nb: usize,
    ) -> [f32; R] {
        let per_block = wtype.heads_per_block();
        assert!(per_block > 0, "decode_rows: {wtype:?} has no decode kernel");
        assert!(w.iter().all(|w| w.len() == nb * wtype.block_bytes()));
        assert!(heads.iter().all(|h| h.len() == per_block * nb));
        assert!(acts.qs.len() >= nb * QK && acts.d.len() >= nb && acts.s.len() >= nb);
        let (w, heads) = (w.map(|w| w.as_ptr()), heads.map(|h| h.as_ptr()));
        let (d, s, qs) = (acts.d.as_ptr(), acts.s.as_ptr(), acts.qs.as_ptr());
        // SAFETY: `decode_available()` was checked by the caller; every read is within the
        // rows, their heads and the first activation row by the asserts.
        unsafe {
            if wtype == WType::Q4_1 {
                q4_1_rows_impl::<R>(w, heads, d, s, qs, nb)
            } else {
                q8_0_rows_impl::<R>(w, heads, d, qs, nb)
            }
        }
    }

    /// `len` (≤ 8) f16 values from `h` times as many f32 from `a` (zeros past `len`): eight
    /// blocks' weight scales times their activation scales.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,f16c,fma,avx2")]
    unsafe fn scaled(h: *const u16, a: *const f32, len: usize) -> __m256 {
        let k: __mmask8 = if len >= 8 { 0xff } else { (1u8 << len) - 1 };
        _mm256_mul_ps(
            _mm256_cvtph_ps(_mm_maskz_loadu_epi16(k, h as *const i16)),
            _mm256_maskz_loadu_ps(k, a),
        )
    }

    // Block b of every row at once: indices read more plainly than zipped iterators here.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,f16c,fma,avx2,gfni")]
    unsafe fn q4_1_rows_impl<const R: usize>(
        w: [*const u8; R],
        heads: [*const u16; R],
        d: *const f32,
        s: *const f32,
        qs: *const i8,
        nb: usize,
    ) -> [f32; R] {
        // Affine maps over GF(2) per 64-bit lane: the low lanes keep bits 0-3 (the first 16
        // values), the high lanes move bits 4-7 down (the last 16).
        let lo = 0x0102_0408_0000_0000u64 as i64;
        let hi = 0x1020_4080_0000_0000u64 as i64;
        let split = _mm256_set_epi64x(hi, hi, lo, lo);
        let mut acc = [_mm256_setzero_ps(); R];
        let mut summs = [0f32; R];
        let mut sc = [[0f32; STAGE]; R];
        let mut ms = [0f32; STAGE];
        for c0 in (0..nb).step_by(STAGE) {
            let cn = STAGE.min(nb - c0);
            for r in 0..R {
                for b in (0..cn).step_by(8) {
                    let (h, len) = (heads[r].add(c0 + b), 8.min(cn - b));
                    _mm256_storeu_ps(sc[r].as_mut_ptr().add(b), scaled(h, d.add(c0 + b), len));
                    _mm256_storeu_ps(
                        ms.as_mut_ptr().add(b),
                        scaled(h.add(nb), s.add(c0 + b), len),
                    );
                }
                for &m in &ms[..cn] {
                    summs[r] += m;
                }
            }
            for b in 0..cn {
                let a = _mm256_loadu_si256(qs.add((c0 + b) * QK) as *const __m256i);
                for r in 0..R {
                    let raw = _mm256_broadcastsi128_si256(_mm_loadu_si128(
                        w[r].add((c0 + b) * 20 + 4) as *const __m128i,
                    ));
                    let wq = _mm256_gf2p8affine_epi64_epi8::<0>(raw, split);
                    let p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), wq, a);
                    acc[r] =
                        _mm256_fmadd_ps(_mm256_set1_ps(sc[r][b]), _mm256_cvtepi32_ps(p), acc[r]);
                }
            }
        }
        std::array::from_fn(|r| hsum(acc[r]) + summs[r])
    }

    // Block b of every row at once: indices read more plainly than zipped iterators here.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,f16c,fma,avx2")]
    unsafe fn q8_0_rows_impl<const R: usize>(
        w: [*const u8; R],
        heads: [*const u16; R],
        d: *const f32,
        qs: *const i8,
        nb: usize,
    ) -> [f32; R] {
        let mut acc = [_mm256_setzero_ps(); R];
        let mut sc = [[0f32; STAGE]; R];
        for c0 in (0..nb).step_by(STAGE) {
            let cn = STAGE.min(nb - c0);
            for r in 0..R {
                for b in (0..cn).step_by(8) {
                    let (h, len) = (heads[r].add(c0 + b), 8.min(cn - b));
                    _mm256_storeu_ps(sc[r].as_mut_ptr().add(b), scaled(h, d.add(c0 + b), len));
                }
            }
            for b in 0..cn {
                let a = _mm256_loadu_si256(qs.add((c0 + b) * QK) as *const __m256i);
                for r in 0..R {
                    let wq = _mm256_loadu_si256(w[r].add((c0 + b) * 34 + 2) as *const __m256i);
                    // |w| times the activations with w's signs (ggml's sign trick).
                    let p = _mm256_dpbusd_epi32(
                        _mm256_setzero_si256(),
                        _mm256_abs_epi8(wq),
                        _mm256_sign_epi8(a, wq),
                    );
                    acc[r] =
                        _mm256_fmadd_ps(_mm256_set1_ps(sc[r][b]), _mm256_cvtepi32_ps(p), acc[r]);
                }
            }
        }
        std::array::from_fn(|r| hsum(acc[r]))
    }

    /// Q4_1 weight rows `w0`, `w1` against activation rows `t0..t0 + T`.
    pub fn q4_1_pair<const T: usize>(
        w0: &[u8],
        w1: &[u8],
        acts: &QActs,
        nb: usize,
        t0: usize,
    ) -> ([f32; T], [f32; T]) {
        assert!(w0.len() == nb * 20 && w1.len() == nb * 20);
        assert!(acts.qs.len() >= (t0 + T) * nb * QK && acts.d.len() >= (t0 + T) * nb);
        assert!(acts.s_t.len() == acts.n * nb && t0 + T <= acts.n);
        // SAFETY: `available()` was checked by the caller; indices are in bounds by the asserts.
        unsafe { q4_1_pair_impl::<T>(w0, w1, acts, nb, t0) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,f16c,fma,avx2")]
    unsafe fn q4_1_pair_impl<const T: usize>(
        w0: &[u8],
        w1: &[u8],
        acts: &QActs,
        nb: usize,
        t0: usize,
    ) -> ([f32; T], [f32; T]) {
        let mut acc = [_mm512_setzero_ps(); T];
        let (mut summs0, mut summs1) = ([0f32; T], [0f32; T]);
        let mask = _mm256_set1_epi8(0x0f);
        let (qs, d, st) = (acts.qs.as_ptr(), acts.d.as_ptr(), acts.s_t.as_ptr());
        for b in 0..nb {
            let (b0, b1) = (w0.as_ptr().add(b * 20), w1.as_ptr().add(b * 20));
            let (dw0, dw1) = (f16_at(w0, b * 20), f16_at(w1, b * 20));
            let (mw0, mw1) = (f16_at(w0, b * 20 + 2), f16_at(w1, b * 20 + 2));
            let raw = _mm256_set_m128i(
                _mm_loadu_si128(b1.add(4) as *const __m128i),
                _mm_loadu_si128(b0.add(4) as *const __m128i),
            );
            let lo = _mm256_and_si256(raw, mask);
            let hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
            // [lo0, lo1, hi0, hi1] → [lo0, hi0, lo1, hi1]: each row's 32 nibbles in order.
            let w = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
            let w = _mm512_shuffle_i64x2(w, w, 0b11_01_10_00);
            let dwp = halves(dw0, dw1);
            for (j, acc) in acc.iter_mut().enumerate() {
                let i = (t0 + j) * nb + b;
                let a =
                    _mm512_broadcast_i64x4(_mm256_loadu_si256(qs.add(i * QK) as *const __m256i));
                let p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, a);
                let sc = _mm512_mul_ps(dwp, _mm512_set1_ps(*d.add(i)));
                *acc = _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(p), *acc);
            }
            let srow = std::slice::from_raw_parts(st.add(b * acts.n + t0), T);
            for j in 0..T {
                summs0[j] += mw0 * srow[j];
                summs1[j] += mw1 * srow[j];
            }
        }
        let (mut out0, mut out1) = row_sums(&acc);
        for j in 0..T {
            out0[j] += summs0[j];
            out1[j] += summs1[j];
        }
        (out0, out1)
    }

    /// Q8_0 weight rows `w0`, `w1` against activation rows `t0..t0 + T` (ggml's sign trick:
    /// |w| times the activations with w's signs, as unsigned × signed bytes).
    pub fn q8_0_pair<const T: usize>(
        w0: &[u8],
        w1: &[u8],
        acts: &QActs,
        nb: usize,
        t0: usize,
    ) -> ([f32; T], [f32; T]) {
        assert!(w0.len() == nb * 34 && w1.len() == nb * 34);
        assert!(acts.qs.len() >= (t0 + T) * nb * QK && acts.d.len() >= (t0 + T) * nb);
        // SAFETY: as `q4_1_pair`.
        unsafe { q8_0_pair_impl::<T>(w0, w1, acts, nb, t0) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,f16c,fma,avx2")]
    unsafe fn q8_0_pair_impl<const T: usize>(
        w0: &[u8],
        w1: &[u8],
        acts: &QActs,
        nb: usize,
        t0: usize,
    ) -> ([f32; T], [f32; T]) {
        let mut acc = [_mm512_setzero_ps(); T];
        let (qs, d) = (acts.qs.as_ptr(), acts.d.as_ptr());
        for b in 0..nb {
            let (b0, b1) = (w0.as_ptr().add(b * 34), w1.as_ptr().add(b * 34));
            let (dw0, dw1) = (f16_at(w0, b * 34), f16_at(w1, b * 34));
            let w = _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_loadu_si256(b0.add(2) as *const __m256i)),
                _mm256_loadu_si256(b1.add(2) as *const __m256i),
                1,
            );
            let aw = _mm512_abs_epi8(w);
            let neg = _mm512_movepi8_mask(w);
            let dwp = halves(dw0, dw1);
            for (j, acc) in acc.iter_mut().enumerate() {
                let i = (t0 + j) * nb + b;
                let a =
                    _mm512_broadcast_i64x4(_mm256_loadu_si256(qs.add(i * QK) as *const __m256i));
                let a = _mm512_mask_sub_epi8(a, neg, _mm512_setzero_si512(), a);
                let p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), aw, a);
                let sc = _mm512_mul_ps(dwp, _mm512_set1_ps(*d.add(i)));
                *acc = _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(p), *acc);
            }
        }
        row_sums(&acc)
    }
}

mod kernels {
    //! Block dot products. `d`, `s`: per-block activation scales; `qs`: activation int8s.
    use super::{f16_at, QK};

    #[cfg(target_arch = "x86_64")]
    use std::arch::x86_64::*;

    /// The integer dot products of 32 unsigned and 32 signed bytes, summed in groups of four
    /// into eight i32 lanes (one VNNI instruction where the CPU has it; same integers).
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    #[inline(always)]
    unsafe fn mul_sum_u8_i8(w: __m256i, a: __m256i) -> __m256i {
        #[cfg(all(target_feature = "avx512vnni", target_feature = "avx512vl"))]
        {
            _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, a)
        }
        #[cfg(not(all(target_feature = "avx512vnni", target_feature = "avx512vl")))]
        {
            _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), _mm256_set1_epi16(1))
        }
    }

    /// One Q4_1 weight row against `T` activation rows starting at `t0` (`nb` blocks a row):
    /// the nibbles are unpacked once for all of them. Per row the arithmetic is ggml's
    /// `vec_dot_q4_1_q8_1`, in the same order.
    #[inline]
    pub fn dot_q4_1<const T: usize>(
        w: &[u8],
        d: &[f32],
        s: &[f32],
        qs: &[i8],
        nb: usize,
        t0: usize,
    ) -> [f32; T] {
        assert!(w.len() == nb * 20);
        assert!(
            qs.len() >= (t0 + T) * nb * QK && d.len() >= (t0 + T) * nb && s.len() >= (t0 + T) * nb
        );
        #[cfg(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        ))]
        // SAFETY: the target features are enabled at compile time; every index is in bounds by
        // the assert above; loads are unaligned.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); T];
            let mut summs = [0.0f32; T];
            let mask = _mm_set1_epi8(0x0f);
            for (b, blk) in w.chunks_exact(20).enumerate() {
                let dw = f16_at(blk, 0);
                let mw = f16_at(blk, 2);
                let raw = _mm_loadu_si128(blk.as_ptr().add(4) as *const __m128i);
                let lo = _mm_and_si128(raw, mask);
                let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
                let wq = _mm256_set_m128i(hi, lo);
                for j in 0..T {
                    let i = (t0 + j) * nb + b;
                    let aq = _mm256_loadu_si256(qs.as_ptr().add(i * QK) as *const __m256i);
                    let p = mul_sum_u8_i8(wq, aq);
                    let scale = _mm256_set1_ps(dw * *d.get_unchecked(i));
                    acc[j] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), acc[j]);
                    summs[j] += mw * *s.get_unchecked(i);
                }
            }
            std::array::from_fn(|j| hsum(acc[j]) + summs[j])
        }
        #[cfg(not(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        )))]
        {
            std::array::from_fn(|j| {
                let mut sum = 0.0f32;
                for (b, blk) in w.chunks_exact(20).enumerate() {
                    let i = (t0 + j) * nb + b;
                    let a = &qs[i * QK..(i + 1) * QK];
                    let mut si = 0i32;
                    for k in 0..16 {
                        si += (blk[4 + k] & 0x0f) as i32 * a[k] as i32;
                        si += (blk[4 + k] >> 4) as i32 * a[k + 16] as i32;
                    }
                    sum += f16_at(blk, 0) * d[i] * si as f32 + f16_at(blk, 2) * s[i];
                }
                sum
            })
        }
    }

    #[inline]
    pub fn dot_q4_0(w: &[u8], d: &[f32], qs: &[i8]) -> f32 {
        let mut sum = 0.0f32;
        for (b, blk) in w.chunks_exact(18).enumerate() {
            let a = &qs[b * QK..(b + 1) * QK];
            let mut si = 0i32;
            for j in 0..16 {
                si += ((blk[2 + j] & 0x0f) as i32 - 8) * a[j] as i32;
                si += ((blk[2 + j] >> 4) as i32 - 8) * a[j + 16] as i32;
            }
            sum += f16_at(blk, 0) * d[b] * si as f32;
        }
        sum
    }

    /// One Q8_0 weight row against `T` activation rows (ggml's `vec_dot_q8_0_q8_0` per row).
    #[inline]
    pub fn dot_q8_0<const T: usize>(
        w: &[u8],
        d: &[f32],
        qs: &[i8],
        nb: usize,
        t0: usize,
    ) -> [f32; T] {
        assert!(w.len() == nb * 34 && qs.len() >= (t0 + T) * nb * QK && d.len() >= (t0 + T) * nb);
        #[cfg(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        ))]
        // SAFETY: as in `dot_q4_1`.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); T];
            for (b, blk) in w.chunks_exact(34).enumerate() {
                let dw = f16_at(blk, 0);
                let wq = _mm256_loadu_si256(blk.as_ptr().add(2) as *const __m256i);
                // The unsigned operand must be |w|, with w's sign moved onto the activations.
                let aw = _mm256_sign_epi8(wq, wq);
                for (j, acc) in acc.iter_mut().enumerate() {
                    let i = (t0 + j) * nb + b;
                    let aq = _mm256_loadu_si256(qs.as_ptr().add(i * QK) as *const __m256i);
                    let p = mul_sum_u8_i8(aw, _mm256_sign_epi8(aq, wq));
                    let scale = _mm256_set1_ps(dw * *d.get_unchecked(i));
                    *acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), *acc);
                }
            }
            std::array::from_fn(|j| hsum(acc[j]))
        }
        #[cfg(not(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        )))]
        {
            std::array::from_fn(|j| {
                let mut sum = 0.0f32;
                for (b, blk) in w.chunks_exact(34).enumerate() {
                    let i = (t0 + j) * nb + b;
                    let a = &qs[i * QK..(i + 1) * QK];
                    let si: i32 = (0..QK).map(|k| blk[2 + k] as i8 as i32 * a[k] as i32).sum();
                    sum += f16_at(blk, 0) * d[i] * si as f32;
                }
                sum
            })
        }
    }

    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    #[inline]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a random Q4_1 / Q8_0 matrix and checks the kernel against dequantise-then-dot.
    fn check(wtype: WType) {
        // 3 blocks a row; then 70 (more than the decode kernels stage at once, not a multiple
        // of 8); rows not a multiple of 4.
        for (rows, cols) in [(7, 96), (9, 70 * QK)] {
            check_shape(wtype, rows, cols);
        }
    }

    fn check_shape(wtype: WType, rows: usize, cols: usize) {
        let mut seed = 12345u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        let mut data = vec![];
        for _ in 0..rows * cols / QK {
            let d = f16::from_f32(0.01 + (rnd() % 100) as f32 / 5000.0)
                .to_bits()
                .to_le_bytes();
            data.extend_from_slice(&d);
            match wtype {
                WType::Q4_1 => {
                    let m = f16::from_f32(-0.05 - (rnd() % 100) as f32 / 1000.0)
                        .to_bits()
                        .to_le_bytes();
                    data.extend_from_slice(&m);
                    data.extend((0..16).map(|_| rnd() as u8));
                }
                WType::Q4_0 => data.extend((0..16).map(|_| rnd() as u8)),
                _ => data.extend((0..32).map(|_| rnd() as u8)),
            }
        }
        let w = QMatrix::new(wtype, rows, cols, data).unwrap();
        for n in [1, 2, 3, 5, 9] {
            check_rows(&w, n);
        }
        // Whichever kernel runs a decode step, each row's sum is ggml's, to the bit: the
        // one-row kernel's.
        let x: Vec<f32> = (0..cols)
            .map(|i| ((i * 29 % 31) as f32 - 15.0) / 9.0)
            .collect();
        let acts = w.quantize_acts(&x, 1);
        let mut out = vec![0.0; rows];
        w.matmul(&acts, 1, &mut out);
        for (r, got) in out.iter().enumerate() {
            assert_eq!(
                got.to_bits(),
                w.dots::<1>(r, &acts, 0)[0].to_bits(),
                "{wtype:?} row {r}"
            );
        }
    }

    /// `w` against `n` activation rows (one row: the decode kernel; several: the prompt
    /// kernels, two weight rows and up to 8 activation rows at a time).
    fn check_rows(w: &QMatrix, n: usize) {
        let (rows, cols, wtype) = (w.rows, w.cols, w.wtype);
        let x: Vec<f32> = (0..n * cols)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let acts = w.quantize_acts(&x, n);
        let mut out = vec![0.0; n * rows];
        w.matmul(&acts, n, &mut out);
        let mut wr = vec![0.0; cols];
        for t in 0..n {
            // The activations as the kernel sees them: d * q per block.
            let xq: Vec<f32> = (0..cols)
                .map(|j| acts.d[t * cols / QK + j / QK] * acts.qs[t * cols + j] as f32)
                .collect();
            for r in 0..rows {
                w.dequantize_row(r, &mut wr);
                let exact: f32 = wr.iter().zip(&xq).map(|(a, b)| a * b).sum();
                let got = out[t * rows + r];
                assert!(
                    (got - exact).abs() < 2e-3 * (1.0 + exact.abs()),
                    "{wtype:?} {t} {r}: {got} vs {exact}"
                );
                // And close to the unquantised product.
                let full: f32 = wr
                    .iter()
                    .zip(&x[t * cols..(t + 1) * cols])
                    .map(|(a, b)| a * b)
                    .sum();
                assert!(
                    (got - full).abs() < 0.1 * (1.0 + full.abs()),
                    "{wtype:?} {t} {r}: {got} vs {full}"
                );
            }
        }
    }

    #[test]
    fn q4_1_matches_dequantised_product() {
        check(WType::Q4_1);
    }

    #[test]
    fn q4_0_matches_dequantised_product() {
        check(WType::Q4_0);
    }

    #[test]
    fn q8_0_matches_dequantised_product() {
        check(WType::Q8_0);
    }

    #[test]
    fn wrong_length_is_rejected() {
        assert!(QMatrix::new(WType::Q4_1, 2, 32, vec![0; 39]).is_err());
        assert!(QMatrix::new(WType::Q4_1, 2, 30, vec![0; 40]).is_err());
    }
}
