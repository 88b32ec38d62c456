// echo: copies stdin to stdout byte for byte (binary safe, any size), using
// the raw file descriptors so no stdio translation or buffering limit applies.
#include <errno.h>
#include <stdio.h>
#include <unistd.h>

static char buffer[64 * 1024];

static int write_all(const char *data, size_t len) {
    while (len > 0) {
        ssize_t n = write(STDOUT_FILENO, data, len);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

int main(void) {
    for (;;) {
        ssize_t n = read(STDIN_FILENO, buffer, sizeof buffer);
        if (n == 0) {
            return 0;
        }
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            perror("echo: read");
            return 1;
        }
        if (write_all(buffer, (size_t)n) != 0) {
            perror("echo: write");
            return 1;
        }
    }
}
