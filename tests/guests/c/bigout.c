// bigout: writes 64 MiB of 'x' to stdout, to test the host's output limits
// and streaming.
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define TOTAL_BYTES (64u * 1024u * 1024u)

static char buffer[64 * 1024];

int main(void) {
    memset(buffer, 'x', sizeof buffer);
    size_t remaining = TOTAL_BYTES;
    while (remaining > 0) {
        size_t len = remaining < sizeof buffer ? remaining : sizeof buffer;
        ssize_t n = write(STDOUT_FILENO, buffer, len);
        if (n < 0) {
            perror("bigout: write");
            return 1;
        }
        remaining -= (size_t)n;
    }
    return 0;
}
