// fs: file-system probe. Reads commands from stdin, one per line, and runs
// them in order, printing one line of result each:
//   cat PATH         -> the file's contents (then a newline)
//   write PATH N     -> writes N bytes of 'x' to PATH (created or truncated): "wrote N" or "error: ..."
//   exists PATH      -> "yes" or "no"
//   args             -> argv[1..] separated by spaces
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    char line[4096];
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        char *cmd = strtok(line, " ");
        if (!cmd) continue;
        char *path = strtok(NULL, " ");
        if (strcmp(cmd, "args") == 0) {
            for (int i = 1; i < argc; i++) printf(i > 1 ? " %s" : "%s", argv[i]);
            printf("\n");
        } else if (strcmp(cmd, "cat") == 0 && path) {
            FILE *f = fopen(path, "r");
            if (!f) { printf("error: %s\n", strerror(errno)); continue; }
            int c;
            while ((c = fgetc(f)) != EOF) putchar(c);
            fclose(f);
            printf("\n");
        } else if (strcmp(cmd, "write") == 0 && path) {
            char *n_text = strtok(NULL, " ");
            long n = n_text ? atol(n_text) : 0;
            FILE *f = fopen(path, "w");
            if (!f) { printf("error: %s\n", strerror(errno)); continue; }
            static char chunk[65536];
            memset(chunk, 'x', sizeof chunk);
            long left = n;
            int failed = 0;
            while (left > 0) {
                size_t k = left < (long)sizeof chunk ? (size_t)left : sizeof chunk;
                if (fwrite(chunk, 1, k, f) != k) { failed = 1; break; }
                left -= (long)k;
            }
            if (fclose(f) != 0) failed = 1;
            if (failed) printf("error: %s\n", strerror(errno));
            else printf("wrote %ld\n", n);
        } else if (strcmp(cmd, "exists") == 0 && path) {
            printf(access(path, F_OK) == 0 ? "yes\n" : "no\n");
        } else {
            printf("error: unknown command %s\n", cmd);
        }
        fflush(stdout);
    }
    return 0;
}
