/* libFuzzer entry: clang -fsanitize=fuzzer,address -DTARGET=cltfs_fuzz_pt
 *   tests/fuzz/libfuzzer.c tests/fuzz/targets.c codec/*.c -Icodec -lzstd -lcjson -lz
 * then run the binary on build/fuzz-corpus (made by make_corpus.py). */
#include <stddef.h>
#include <stdint.h>

#ifndef TARGET
#define TARGET cltfs_fuzz_pt
#endif
int TARGET(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return TARGET(data, size); }
