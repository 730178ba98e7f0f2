/* Pillow's 8-bit resampling, bit for bit, faster: the exact frame path's resize.

   Pillow resizes in two separable passes, each rounding to 8 bits (libImaging/Resample.c):
   an output line is (2^21 + sum of source lines * coefficient) >> 22, clipped to 0..255,
   with integer coefficients of 22 fractional bits. `vitedge_lines` is that sum for whole
   lines at once, so that the compiler vectorises it across the line; a horizontal pass
   is run as lines of a transposed image (`vitedge_transpose`). The coefficients are
   Pillow's own, read from Pillow by the caller (vitedge/runtime/resample.py); this file
   only adds and multiplies integers, in any order (the sums fit in 32 bits, as Pillow's
   do). No Python headers: loaded with ctypes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
/* an AVX2 copy beside the baseline one, picked when the library loads */
#define VITEDGE_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define VITEDGE_CLONES
#endif

#if defined(_WIN32)
#define VITEDGE_EXPORT __declspec(dllexport)
#else
#define VITEDGE_EXPORT
#endif

#define PRECISION_BITS 22

/* Output line j (of `lines`) = sum over t < count[j] of source line first[j] + t times
   coef[j * ksize + t]; a line is `width` bytes, lines `in_stride` / `out_stride` bytes
   apart. Returns 0, or -1 when out of memory. */
VITEDGE_EXPORT VITEDGE_CLONES int vitedge_lines(const uint8_t *in, long in_stride, uint8_t *out,
                                 long out_stride, int width, int lines, const int32_t *first,
                                 const int32_t *count, const int32_t *coef, int ksize) {
    int32_t *acc = malloc((size_t)(width > 0 ? width : 1) * sizeof(int32_t));
    if (!acc) {
        return -1;
    }
    for (int j = 0; j < lines; j++) {
        const int32_t *k = coef + (long)j * ksize;
        for (int x = 0; x < width; x++) {
            acc[x] = 1 << (PRECISION_BITS - 1);
        }
        for (int t = 0; t < count[j]; t++) {
            const uint8_t *src = in + (long)(first[j] + t) * in_stride;
            const int32_t w = k[t];
            for (int x = 0; x < width; x++) {
                acc[x] += (int32_t)src[x] * w;
            }
        }
        uint8_t *dst = out + (long)j * out_stride;
        for (int x = 0; x < width; x++) {
            const int32_t v = acc[x] >> PRECISION_BITS;
            dst[x] = (uint8_t)(v < 0 ? 0 : (v > 255 ? 255 : v));
        }
    }
    free(acc);
    return 0;
}

/* One 3-byte pixel, its first and third bytes exchanged when `swap` (BGR <-> RGB). */
static inline void copy3(uint8_t *dst, const uint8_t *src, int swap) {
    dst[0] = src[swap ? 2 : 0];
    dst[1] = src[1];
    dst[2] = src[swap ? 0 : 2];
}

/* The same through 4-byte moves: reads one byte past the pixel and writes one byte past it
   (the next pixel's, written after), so never for a source line's last pixel nor an output
   line's last. */
static inline void copy3_wide(uint8_t *dst, const uint8_t *src, int swap) {
    uint32_t v;
    memcpy(&v, src, 4);
    if (swap) {
        v = (v & 0xff00ff00u) | ((v & 0xffu) << 16) | ((v >> 16) & 0xffu);
    }
    memcpy(dst, &v, 4);
}

/* (rows, cols) pixels of `px` bytes (1 or 3) -> (cols, rows), in tiles that stay in cache;
   3-byte pixels have their first and third bytes exchanged when `swap`. */
VITEDGE_EXPORT void vitedge_transpose(const uint8_t *in, long in_stride, uint8_t *out, long out_stride,
                       int rows, int cols, int px, int swap) {
    enum { TILE = 32 };
    for (int r0 = 0; r0 < rows; r0 += TILE) {
        const int r1 = r0 + TILE < rows ? r0 + TILE : rows;
        for (int c0 = 0; c0 < cols; c0 += TILE) {
            const int c1 = c0 + TILE < cols ? c0 + TILE : cols;
            for (int c = c0; c < c1; c++) {
                uint8_t *dst = out + (long)c * out_stride + (long)r0 * px;
                const uint8_t *src = in + (long)r0 * in_stride + (long)c * px;
                if (px == 1) {
                    for (int r = r0; r < r1; r++, dst += 1, src += in_stride) {
                        dst[0] = src[0];
                    }
                    continue;
                }
                /* the wide moves where both neighbours are inside their lines */
                const int wide_to = (c == cols - 1) ? r0 : (r1 == rows ? r1 - 1 : r1);
                int r = r0;
                for (; r < wide_to; r++, dst += 3, src += in_stride) {
                    copy3_wide(dst, src, swap);
                }
                for (; r < r1; r++, dst += 3, src += in_stride) {
                    copy3(dst, src, swap);
                }
            }
        }
    }
}
