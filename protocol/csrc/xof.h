/*
 * BLAKE3's extendable output, many blocks at once (included by native.c after blake3.c).
 *
 * Each 64-byte output block of the XOF is one compression of the same root node with a
 * different block counter, so 16 blocks (AVX-512) or 8 (AVX2) are computed side by side,
 * one counter per vector lane; only the counter differs between lanes, every other input is
 * broadcast. The vendored BLAKE3 (1.3.3) computes them one at a time, which made the 2 KiB
 * of lanes per row the largest cost of a table digest. Written with GCC/Clang vector
 * extensions and per-function targets, chosen at run time by what the CPU supports; other
 * machines use the library's one-block function. Tests compare every length and path with
 * the blake3 package (tests/test_fastrows.py).
 */
#include <stdint.h>
#include <string.h>

/* The root node of a finished hasher: blake3_hasher_finalize_seek up to its output. */
static output_t
root_output(const blake3_hasher *self)
{
    if (self->cv_stack_len == 0)
        return chunk_state_output(&self->chunk);
    output_t output;
    size_t cvs_remaining;
    if (chunk_state_len(&self->chunk) > 0) {
        cvs_remaining = self->cv_stack_len;
        output = chunk_state_output(&self->chunk);
    } else {
        cvs_remaining = self->cv_stack_len - 2;
        output = parent_output(&self->cv_stack[cvs_remaining * 32], self->key, self->chunk.flags);
    }
    while (cvs_remaining > 0) {
        cvs_remaining -= 1;
        uint8_t parent_block[BLAKE3_BLOCK_LEN];
        memcpy(parent_block, &self->cv_stack[cvs_remaining * 32], 32);
        output_chaining_value(&output, &parent_block[32]);
        output = parent_output(parent_block, self->key, self->chunk.flags);
    }
    return output;
}

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(_M_X64)) && \
    defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define WIDE_XOF 1

/* One function body per vector width: N lanes of 32-bit words. */
#define DEFINE_WIDE_XOF(NAME, TARGET, N)                                                          \
    typedef uint32_t NAME##_v __attribute__((vector_size(4 * N)));                                \
    __attribute__((target(TARGET))) static void NAME(const output_t *o, uint64_t first,          \
                                                     uint8_t *out)                                \
    {                                                                                             \
        uint32_t m[16];                                                                           \
        memcpy(m, o->block, 64);                                                                  \
        NAME##_v v[16], lane;                                                                     \
        for (int i = 0; i < N; i++)                                                               \
            lane[i] = (uint32_t)i;                                                                \
        for (int i = 0; i < 8; i++)                                                               \
            v[i] = (NAME##_v){0} + o->input_cv[i];                                                \
        for (int i = 0; i < 4; i++)                                                               \
            v[8 + i] = (NAME##_v){0} + IV[i];                                                     \
        v[12] = lane + (uint32_t)first; /* the counter of lane i is first + i */                  \
        v[13] = ((NAME##_v){0} + (uint32_t)(first >> 32)) - (NAME##_v)(v[12] < lane); /* carry */ \
        v[14] = (NAME##_v){0} + o->block_len;                                                     \
        v[15] = (NAME##_v){0} + (uint32_t)(o->flags | ROOT);                                      \
        for (int r = 0; r < 7; r++) {                                                             \
            const uint8_t *s = MSG_SCHEDULE[r];                                                   \
            WIDE_G(NAME##_v, v, 0, 4, 8, 12, m[s[0]], m[s[1]]);                                   \
            WIDE_G(NAME##_v, v, 1, 5, 9, 13, m[s[2]], m[s[3]]);                                   \
            WIDE_G(NAME##_v, v, 2, 6, 10, 14, m[s[4]], m[s[5]]);                                  \
            WIDE_G(NAME##_v, v, 3, 7, 11, 15, m[s[6]], m[s[7]]);                                  \
            WIDE_G(NAME##_v, v, 0, 5, 10, 15, m[s[8]], m[s[9]]);                                  \
            WIDE_G(NAME##_v, v, 1, 6, 11, 12, m[s[10]], m[s[11]]);                                \
            WIDE_G(NAME##_v, v, 2, 7, 8, 13, m[s[12]], m[s[13]]);                                 \
            WIDE_G(NAME##_v, v, 3, 4, 9, 14, m[s[14]], m[s[15]]);                                 \
        }                                                                                         \
        uint32_t words[16][N];                                                                    \
        for (int i = 0; i < 8; i++) {                                                             \
            NAME##_v low = v[i] ^ v[i + 8], high = v[i + 8] ^ o->input_cv[i];                     \
            memcpy(words[i], &low, sizeof low);                                                   \
            memcpy(words[i + 8], &high, sizeof high);                                             \
        }                                                                                         \
        uint32_t *block = (uint32_t *)(void *)out;                                                \
        for (int b = 0; b < N; b++)                                                               \
            for (int w = 0; w < 16; w++)                                                          \
                block[16 * b + w] = words[w][b];                                                  \
    }

#define WIDE_ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
#define WIDE_G(T, v, a, b, c, d, x, y)                                                            \
    do {                                                                                          \
        v[a] = v[a] + v[b] + (x);                                                                 \
        v[d] = WIDE_ROTR(v[d] ^ v[a], 16);                                                        \
        v[c] = v[c] + v[d];                                                                       \
        v[b] = WIDE_ROTR(v[b] ^ v[c], 12);                                                        \
        v[a] = v[a] + v[b] + (y);                                                                 \
        v[d] = WIDE_ROTR(v[d] ^ v[a], 8);                                                         \
        v[c] = v[c] + v[d];                                                                       \
        v[b] = WIDE_ROTR(v[b] ^ v[c], 7);                                                         \
    } while (0)

DEFINE_WIDE_XOF(xof16_avx512, "avx512f", 16)
DEFINE_WIDE_XOF(xof8_avx2, "avx2", 8)
#endif

/* Blocks computed side by side: the widest the CPU supports, or a narrower one (tests). */
static int xof_width = 0;

static int
widest_xof(void)
{
#ifdef WIDE_XOF
    return __builtin_cpu_supports("avx512f") ? 16 : __builtin_cpu_supports("avx2") ? 8 : 1;
#else
    return 1;
#endif
}

/* out_len (a multiple of 64) bytes of the hasher's XOF from offset 0. */
static void
xof_blocks(const blake3_hasher *hasher, uint8_t *out, size_t out_len)
{
    output_t root = root_output(hasher);
    uint64_t block = 0, blocks = out_len / 64;
#ifdef WIDE_XOF
    int width = xof_width;
    for (; width == 16 && block + 16 <= blocks; block += 16)
        xof16_avx512(&root, block, out + 64 * block);
    for (; width >= 8 && block + 8 <= blocks; block += 8)
        xof8_avx2(&root, block, out + 64 * block);
#endif
    for (; block < blocks; block++)
        blake3_compress_xof(root.input_cv, root.block, root.block_len, block, root.flags | ROOT,
                            out + 64 * block);
}
