// wordcount: an Updraft command function in plain C.
//
// The event (the request body) arrives on stdin; the result goes to stdout
// as "<lines> <words> <bytes>\n", like `wc`; one log line goes to stderr.
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <unistd.h>

static unsigned char buffer[64 * 1024];

int main(void) {
    unsigned long long lines = 0, words = 0, bytes = 0;
    int in_word = 0;
    for (;;) {
        ssize_t n = read(STDIN_FILENO, buffer, sizeof buffer);
        if (n == 0) {
            break;
        }
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            perror("wordcount: read");
            return 1;
        }
        for (ssize_t i = 0; i < n; i++) {
            unsigned char c = buffer[i];
            if (c == '\n') {
                lines++;
            }
            if (isspace(c)) {
                in_word = 0;
            } else if (!in_word) {
                in_word = 1;
                words++;
            }
        }
        bytes += (unsigned long long)n;
    }
    printf("%llu %llu %llu\n", lines, words, bytes);
    fprintf(stderr, "wordcount: counted %llu bytes\n", bytes);
    return 0;
}
