//! Reduced-precision matrix products for encoder inference: bf16 (AVX512-BF16 `vdpbf16ps`) and
//! int8 (AVX512-VNNI `vpdpbusd`), chosen at run time from the CPU's features so one binary runs
//! on any x86-64 (and on ARM), falling back to f32 with a notice where the instructions are
//! missing.
//!
//! Why: MiniLM inference in f32 already runs near this CPU's f32 peak; the two reduced-precision
//! dot products do 2x (bf16) and 4x (int8) the multiply-adds per instruction. Weights are packed
//! once at load in panels of 16 output columns; activations are converted per call.
//! - bf16: weights and activations rounded to bf16 (8 significant bits), sums in f32.
//! - int8: weights symmetric per output column (scale = max |w| / 127); activations quantised
//!   at run time per token and per group of 64 inputs from their own range (dynamic
//!   quantisation: no calibration data needed, and no range learnt on one dataset to be wrong
//!   on another; the groups keep BERT's few outlier channels from flattening the rest), sums in
//!   i32 per group, then scaled into f32. The encoder keeps its Q/K/V projection in bf16 where
//!   the CPU has it (`Bert::set_precision`): that product was the one whose int8 error pushed
//!   embeddings below the accuracy guard, and bf16 costs it nothing measurable here.

use rayon::prelude::*;
use std::fmt;

/// Numeric precision of an encoder's matrix products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 throughout (the reference; equal to sentence-transformers).
    #[default]
    F32,
    /// bf16 weights and activations, f32 sums (AVX512-BF16).
    Bf16,
    /// int8 weights (per output column) and activations (per token, dynamic), i32 sums
    /// (AVX512-VNNI).
    Int8,
}

impl Precision {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
        }
    }

    /// The precision this CPU runs: `self` where its instructions are present, else f32 and a
    /// notice saying which instruction set is missing.
    pub fn resolve(self) -> (Precision, Option<String>) {
        let missing = match self {
            Precision::F32 => None,
            Precision::Bf16 if !has_bf16() => Some("AVX512-BF16"),
            Precision::Int8 if !has_vnni() => Some("AVX512-VNNI"),
            _ => None,
        };
        match missing {
            None => (self, None),
            Some(isa) => (
                Precision::F32,
                Some(format!(
                    "--precision {}: this CPU lacks {isa}; running in f32 instead (same answers, no speed-up)",
                    self.name()
                )),
            ),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "int8" | "i8" => Ok(Precision::Int8),
            _ => Err(format!("unknown precision {s:?}: use f32, bf16 or int8")),
        }
    }
}

/// Instruction sets named in `FRUGAL_DISABLE_CPU_FEATURES` (comma-separated, e.g.
/// `avx512bf16,avx512vnni`) are treated as absent: how the fallback is tested on a CPU that has
/// them.
pub(crate) fn feature_disabled(feature: &str) -> bool {
    std::env::var("FRUGAL_DISABLE_CPU_FEATURES")
        .map(|v| v.split(',').any(|f| f.trim().eq_ignore_ascii_case(feature)))
        .unwrap_or(false)
}

/// Whether the bf16 kernel can run here (checked once: every product asks).
pub fn has_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bf16")
                && !feature_disabled("avx512bf16")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the int8 kernel can run here (checked once).
pub fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vnni")
                && !feature_disabled("avx512vnni")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Output columns per packed panel (one 512-bit register of f32/i32 lanes).
const NR: usize = 16;
/// Activation rows per micro-tile.
const MR: usize = 8;
/// Activation rows converted and multiplied per task (their converted copy stays in L2).
const MC: usize = 128;
/// Inputs per int8 activation scale.
const GROUP: usize = 64;

/// The symmetric int8 scale of a group of values: max |x| / 127 (1 for an all-zero group).
#[inline]
fn int8_scale(xs: &[f32]) -> f32 {
    let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
    if amax > 0.0 {
        amax / 127.0
    } else {
        1.0
    }
}

/// f32 → bf16 bits, rounding to nearest even (as `vcvtneps2bf16`).
#[inline]
fn to_bf16(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

#[inline]
fn from_bf16(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// The packed weights of one linear layer.
enum Packed {
    /// Per panel, per pair of inputs, 16 lanes × 2 bf16.
    Bf16(Vec<u16>),
    /// Per panel, per four inputs, 16 lanes × 4 int8; per column its scale; per panel and
    /// group, 128 × the sum of each column's int8 weights in the group, as f32 (activations
    /// enter as unsigned bytes offset by 128; the sum removes the offset).
    Int8 {
        w: Vec<i8>,
        scale: Vec<f32>,
        comp: Vec<f32>,
    },
}

/// A linear layer `y = x·Wᵀ + b` (W is `n` × `k`) in bf16 or int8, optionally followed by GELU
/// (fused into the write-out).
pub struct PackedLinear {
    n: usize,
    k: usize,
    /// `k` rounded up to the packing's group (2 or 4).
    kp: usize,
    /// Panels of 16 columns, an even number (the micro-kernel takes two).
    panels: usize,
    packed: Packed,
    bias: Vec<f32>,
    gelu: bool,
}

impl PackedLinear {
    /// Packs `weight` (`n` rows of `k`, row-major) and `bias` (`n`) for `precision` (bf16 or
    /// int8). Runs on any CPU: without the instructions a scalar kernel gives the same numbers.
    pub fn new(
        weight: &[f32],
        bias: &[f32],
        n: usize,
        k: usize,
        precision: Precision,
        gelu: bool,
    ) -> PackedLinear {
        assert_eq!(weight.len(), n * k, "weight is not {n} x {k}");
        assert_eq!(bias.len(), n, "bias is not {n} long");
        let panels = n.div_ceil(2 * NR) * 2;
        let w = |c: usize, j: usize| {
            if c < n && j < k {
                weight[c * k + j]
            } else {
                0.0
            }
        };
        let (kp, packed) = match precision {
            Precision::F32 => panic!("PackedLinear holds bf16 or int8 weights"),
            Precision::Bf16 => {
                let kp = k.div_ceil(2) * 2;
                let mut out = Vec::with_capacity(panels * kp * NR);
                for p in 0..panels {
                    for kk in 0..kp / 2 {
                        for l in 0..NR {
                            let c = p * NR + l;
                            out.push(to_bf16(w(c, 2 * kk)));
                            out.push(to_bf16(w(c, 2 * kk + 1)));
                        }
                    }
                }
                (kp, Packed::Bf16(out))
            }
            Precision::Int8 => {
                let kp = k.div_ceil(GROUP) * GROUP;
                let ng = kp / GROUP;
                let mut scale = vec![0f32; panels * ng * NR];
                let mut q = vec![0i8; panels * NR * kp];
                let mut comp = vec![0f32; panels * ng * NR];
                for c in 0..n {
                    let row = &weight[c * k..(c + 1) * k];
                    for (g, ws) in row.chunks(GROUP).enumerate() {
                        let at = ((c / NR) * ng + g) * NR + c % NR;
                        let s = int8_scale(ws);
                        scale[at] = s;
                        for (j, v) in ws.iter().enumerate() {
                            let r = (v / s).round().clamp(-127.0, 127.0) as i8;
                            q[c * kp + g * GROUP + j] = r;
                            comp[at] += 128.0 * r as f32;
                        }
                    }
                }
                let mut out = Vec::with_capacity(panels * kp * NR);
                for p in 0..panels {
                    for kq in 0..kp / 4 {
                        for l in 0..NR {
                            let c = p * NR + l;
                            for i in 0..4 {
                                out.push(q[c * kp + 4 * kq + i]);
                            }
                        }
                    }
                }
                (
                    kp,
                    Packed::Int8 {
                        w: out,
                        scale,
                        comp,
                    },
                )
            }
        };
        PackedLinear {
            n,
            k,
            kp,
            panels,
            packed,
            bias: {
                let mut b = bias.to_vec();
                b.resize(panels * NR, 0.0);
                b
            },
            gelu,
        }
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        self.n
    }

    /// `out = x·Wᵀ + b` (then GELU if asked) for `m` rows of `x` (each `k` long); `out` is
    /// `m` × `n`. Rows are split into tasks across rayon's threads.
    pub fn forward(&self, x: &[f32], m: usize, out: &mut [f32]) {
        assert_eq!(x.len(), m * self.k, "input is not {m} x {}", self.k);
        assert_eq!(out.len(), m * self.n, "output is not {m} x {}", self.n);
        let fast = match self.packed {
            Packed::Bf16(_) => has_bf16(),
            Packed::Int8 { .. } => has_vnni(),
        };
        out.par_chunks_mut(MC * self.n)
            .zip(x.par_chunks(MC * self.k))
            .for_each(|(o, xs)| self.chunk(xs, o, fast));
    }

    /// One task: converts its rows, then for every pair of panels and every 8 rows runs the
    /// micro-kernel and writes the tile out.
    fn chunk(&self, x: &[f32], out: &mut [f32], fast: bool) {
        let (k, kp) = (self.k, self.kp);
        let m = x.len() / k;
        let mp = m.div_ceil(MR) * MR;
        let mut tile = [0f32; MR * 2 * NR];
        match &self.packed {
            Packed::Bf16(w) => {
                let mut a = vec![0u16; mp * kp];
                for (r, row) in x.chunks_exact(k).enumerate() {
                    for (d, v) in a[r * kp..r * kp + k].iter_mut().zip(row) {
                        *d = to_bf16(*v);
                    }
                }
                let panel = kp * NR;
                for p in (0..self.panels).step_by(2) {
                    let b = &w[p * panel..(p + 2) * panel];
                    for r0 in (0..m).step_by(MR) {
                        let a = &a[r0 * kp..(r0 + MR) * kp];
                        kernel_bf16(a, b, kp, &mut tile, fast);
                        self.write(out, &mut tile, r0, m, p);
                    }
                }
            }
            Packed::Int8 { w, comp, scale } => {
                let ng = kp / GROUP;
                let mut a = vec![128u8; mp * kp];
                let mut ascale = vec![1f32; mp * ng];
                for (r, row) in x.chunks_exact(k).enumerate() {
                    for (g, xs) in row.chunks(GROUP).enumerate() {
                        let s = int8_scale(xs);
                        ascale[r * ng + g] = s;
                        let inv = 1.0 / s;
                        let d = &mut a[r * kp + g * GROUP..r * kp + g * GROUP + xs.len()];
                        for (d, v) in d.iter_mut().zip(xs) {
                            *d = ((v * inv).round().clamp(-127.0, 127.0) as i32 + 128) as u8;
                        }
                    }
                }
                let panel = kp * NR;
                for p in (0..self.panels).step_by(2) {
                    let b = &w[p * panel..(p + 2) * panel];
                    let cp = &comp[p * ng * NR..(p + 2) * ng * NR];
                    let ws = &scale[p * ng * NR..(p + 2) * ng * NR];
                    for r0 in (0..m).step_by(MR) {
                        let a = &a[r0 * kp..(r0 + MR) * kp];
                        let s = &ascale[r0 * ng..(r0 + MR) * ng];
                        kernel_int8(a, b, kp, s, cp, ws, &mut tile, fast);
                        self.write(out, &mut tile, r0, m, p);
                    }
                }
            }
        }
    }

    /// Writes the valid part of a tile (rows `r0..`, panels `p`, `p+1`): the bias added, GELU
    /// applied if asked. Whole 32-column rows so the loops vectorise.
    #[inline]
    fn write(&self, out: &mut [f32], tile: &mut [f32; MR * 2 * NR], r0: usize, m: usize, p: usize) {
        let n = self.n;
        let c0 = p * NR;
        if c0 >= n {
            return;
        }
        let cols = (n - c0).min(2 * NR);
        let bias: &[f32; 2 * NR] = self.bias[c0..c0 + 2 * NR].try_into().expect("padded");
        for r in 0..MR.min(m - r0) {
            let t: &mut [f32; 2 * NR] = (&mut tile[r * 2 * NR..(r + 1) * 2 * NR])
                .try_into()
                .expect("tile row");
            for j in 0..2 * NR {
                t[j] += bias[j];
            }
            if self.gelu {
                for v in t.iter_mut() {
                    *v = crate::encoder::ops::gelu(*v);
                }
            }
            out[(r0 + r) * n + c0..(r0 + r) * n + c0 + cols].copy_from_slice(&t[..cols]);
        }
    }
}

/// 8 rows of `a` (each `kp` bf16) × two panels of `b` → `tile` (8 × 32 f32, row-major).
fn kernel_bf16(a: &[u16], b: &[u16], kp: usize, tile: &mut [f32; MR * 2 * NR], fast: bool) {
    assert!(a.len() >= MR * kp && b.len() >= 2 * kp * NR);
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: the CPU has AVX512F + AVX512-BF16 (checked by the caller); the slices hold
        // what the kernel reads (asserted above).
        unsafe { x86::bf16(a.as_ptr(), b.as_ptr(), kp, tile) };
        return;
    }
    let _ = fast;
    let panel = kp * NR;
    for r in 0..MR {
        for h in 0..2 {
            for l in 0..NR {
                let mut s = 0f32;
                for kk in 0..kp / 2 {
                    let bw = &b[h * panel + (kk * NR + l) * 2..];
                    s += from_bf16(a[r * kp + 2 * kk]) * from_bf16(bw[0])
                        + from_bf16(a[r * kp + 2 * kk + 1]) * from_bf16(bw[1]);
                }
                tile[r * 2 * NR + h * NR + l] = s;
            }
        }
    }
}

/// 8 rows of `a` (each `kp` unsigned bytes, offset by 128) × two panels of `b` (int8) →
/// `tile`: per group of 64 inputs the i32 sums, less the offset's share `comp`, times the row's
/// group scale `ascale` (8 rows × groups) and the column's group scale `wscale` (`comp` and
/// `wscale` per panel, group and lane), summed in f32.
#[allow(clippy::too_many_arguments)]
fn kernel_int8(
    a: &[u8],
    b: &[i8],
    kp: usize,
    ascale: &[f32],
    comp: &[f32],
    wscale: &[f32],
    tile: &mut [f32; MR * 2 * NR],
    fast: bool,
) {
    let ng = kp / GROUP;
    assert!(a.len() >= MR * kp && b.len() >= 2 * kp * NR);
    assert!(ascale.len() >= MR * ng && comp.len() >= 2 * ng * NR && wscale.len() >= 2 * ng * NR);
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: the CPU has AVX512F + AVX512-VNNI (checked by the caller); bounds asserted.
        unsafe {
            x86::int8(
                a.as_ptr(),
                b.as_ptr(),
                kp,
                ascale.as_ptr(),
                comp.as_ptr(),
                wscale.as_ptr(),
                tile,
            )
        };
        return;
    }
    let _ = fast;
    let panel = kp * NR;
    tile.fill(0.0);
    for g in 0..ng {
        for r in 0..MR {
            for h in 0..2 {
                for l in 0..NR {
                    let mut s = 0i32;
                    for kq in g * GROUP / 4..(g + 1) * GROUP / 4 {
                        for i in 0..4 {
                            s += a[r * kp + 4 * kq + i] as i32
                                * b[h * panel + (kq * NR + l) * 4 + i] as i32;
                        }
                    }
                    let at = (h * ng + g) * NR + l;
                    let t = &mut tile[r * 2 * NR + h * NR + l];
                    *t = (s as f32 - comp[at]).mul_add(ascale[r * ng + g] * wscale[at], *t);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{GROUP, MR, NR};
    use std::arch::x86_64::*;

    /// See `kernel_bf16`. 16 accumulators (8 rows × 2 panels) stay in registers; each step
    /// broadcasts one bf16 pair of a row and multiplies it with 16 columns' pairs.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn bf16(a: *const u16, b: *const u16, kp: usize, tile: &mut [f32; MR * 2 * NR]) {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        let panel = kp * NR;
        for kk in 0..kp / 2 {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(kk * 2 * NR) as _));
            let b1: __m512bh =
                std::mem::transmute(_mm512_loadu_si512(b.add(panel + kk * 2 * NR) as _));
            for (r, acc) in acc.iter_mut().enumerate() {
                let pair = (a.add(r * kp + 2 * kk) as *const i32).read_unaligned();
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                acc[0] = _mm512_dpbf16_ps(acc[0], av, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], av, b1);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(tile.as_mut_ptr().add(r * 2 * NR), acc[0]);
            _mm512_storeu_ps(tile.as_mut_ptr().add(r * 2 * NR + NR), acc[1]);
        }
    }

    /// See `kernel_int8`: as `bf16`, with four unsigned activation bytes times four signed
    /// weight bytes per lane and step (`vpdpbusd`), i32 sums per group folded into f32.
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub unsafe fn int8(
        a: *const u8,
        b: *const i8,
        kp: usize,
        ascale: *const f32,
        comp: *const f32,
        wscale: *const f32,
        tile: &mut [f32; MR * 2 * NR],
    ) {
        let ng = kp / GROUP;
        let mut facc = [[_mm512_setzero_ps(); 2]; MR];
        let panel = kp * NR;
        for g in 0..ng {
            let mut acc = [[_mm512_setzero_si512(); 2]; MR];
            for kq in g * GROUP / 4..(g + 1) * GROUP / 4 {
                let b0 = _mm512_loadu_si512(b.add(kq * 4 * NR) as _);
                let b1 = _mm512_loadu_si512(b.add(panel + kq * 4 * NR) as _);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let quad = (a.add(r * kp + 4 * kq) as *const i32).read_unaligned();
                    let av = _mm512_set1_epi32(quad);
                    acc[0] = _mm512_dpbusd_epi32(acc[0], av, b0);
                    acc[1] = _mm512_dpbusd_epi32(acc[1], av, b1);
                }
            }
            let c0 = _mm512_loadu_ps(comp.add(g * NR));
            let c1 = _mm512_loadu_ps(comp.add((ng + g) * NR));
            let w0 = _mm512_loadu_ps(wscale.add(g * NR));
            let w1 = _mm512_loadu_ps(wscale.add((ng + g) * NR));
            for (r, (facc, acc)) in facc.iter_mut().zip(&acc).enumerate() {
                let s = _mm512_set1_ps(*ascale.add(r * ng + g));
                let (s0, s1) = (_mm512_mul_ps(s, w0), _mm512_mul_ps(s, w1));
                facc[0] =
                    _mm512_fmadd_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(acc[0]), c0), s0, facc[0]);
                facc[1] =
                    _mm512_fmadd_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(acc[1]), c1), s1, facc[1]);
            }
        }
        for (r, acc) in facc.iter().enumerate() {
            _mm512_storeu_ps(tile.as_mut_ptr().add(r * 2 * NR), acc[0]);
            _mm512_storeu_ps(tile.as_mut_ptr().add(r * 2 * NR + NR), acc[1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn reference(x: &[f32], w: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for r in 0..m {
            for c in 0..n {
                out[r * n + c] = (0..k).map(|j| x[r * k + j] * w[c * k + j]).sum::<f32>() + b[c];
            }
        }
        out
    }

    /// Odd shapes (rows, columns and inputs not multiples of the tile) against f32, with the
    /// fast and the scalar kernel giving the same numbers.
    fn check(p: Precision, tol: f32) {
        for (m, n, k) in [(1, 5, 3), (13, 40, 37), (130, 70, 96), (9, 384, 384)] {
            let x = data(m * k, 1);
            let w = data(n * k, 2);
            let b = data(n, 3);
            let want = reference(&x, &w, &b, m, n, k);
            let lin = PackedLinear::new(&w, &b, n, k, p, false);
            let mut got = vec![0f32; m * n];
            lin.forward(&x, m, &mut got);
            let scale = (k as f32).sqrt() * 0.6;
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() < tol * scale,
                    "{p} {m}x{n}x{k} [{i}]: {g} vs {w}"
                );
            }
            // The scalar fallback computes the same sums.
            let mut slow = vec![0f32; m * n];
            for (o, xs) in slow.chunks_mut(MC * n).zip(x.chunks(MC * k)) {
                lin.chunk(xs, o, false);
            }
            for (g, s) in got.iter().zip(&slow) {
                assert!(
                    (g - s).abs() <= 1e-4 * (1.0 + s.abs()),
                    "{p}: fast {g} vs scalar {s}"
                );
            }
        }
    }

    #[test]
    fn bf16_product_is_close_to_f32() {
        check(Precision::Bf16, 0.01);
    }

    #[test]
    fn int8_product_is_close_to_f32() {
        check(Precision::Int8, 0.02);
    }

    #[test]
    fn gelu_is_fused_into_the_write_out() {
        let (m, n, k) = (3, 20, 8);
        let (x, w, b) = (data(m * k, 4), data(n * k, 5), data(n, 6));
        let lin = PackedLinear::new(&w, &b, n, k, Precision::Bf16, true);
        let mut got = vec![0f32; m * n];
        lin.forward(&x, m, &mut got);
        for (g, v) in got.iter().zip(reference(&x, &w, &b, m, n, k)) {
            let want = 0.5 * v * (1.0 + crate::encoder::ops::fast_erf(v / 2f32.sqrt()));
            assert!((g - want).abs() < 0.02, "{g} vs {want}");
        }
    }

    #[test]
    fn precision_names_parse_and_unknown_ones_are_refused() {
        assert_eq!("BF16".parse::<Precision>(), Ok(Precision::Bf16));
        assert_eq!("int8".parse::<Precision>(), Ok(Precision::Int8));
        let e = "fp8".parse::<Precision>().unwrap_err();
        assert!(e.contains("f32, bf16 or int8"), "{e}");
        assert_eq!(Precision::F32.resolve(), (Precision::F32, None));
    }
}
