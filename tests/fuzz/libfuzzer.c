/* libFuzzer entry: `make fuzz` builds build/fuzz/<name> from this file with
 * -DTARGET=cltfs_fuzz_<name> (clang -fsanitize=fuzzer,address,undefined);
 * see README for running one on the corpus. */
#include "targets.h"

#ifndef TARGET
#define TARGET cltfs_fuzz_pt
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return TARGET(data, size); }
