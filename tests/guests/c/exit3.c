// exit3: a command that fails on purpose with exit code 3.
#include <stdio.h>

int main(void) {
    fprintf(stderr, "failing on purpose\n");
    return 3;
}
