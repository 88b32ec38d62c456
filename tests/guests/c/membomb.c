// membomb: allocates 1 MiB blocks forever, touching every byte so the memory
// is really committed, and never frees them. The host's memory limit must stop
// it: either memory.grow fails (malloc returns NULL, we say so and exit 1) or
// the host traps the growth.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK_BYTES (1024 * 1024)

// Every block is linked from this volatile head, so the allocations escape
// and the optimizer cannot drop the malloc/memset pair as dead code.
static void *volatile head = NULL;

int main(void) {
    unsigned long chunks = 0;
    for (;;) {
        char *block = malloc(CHUNK_BYTES);
        if (block == NULL) {
            fprintf(stderr, "membomb: malloc failed\n");
            return 1;
        }
        memset(block, (int)(chunks & 0x7f) | 1, CHUNK_BYTES);
        *(void **)block = head;
        head = block;
        chunks++;
    }
}
