// trap: says so on stderr, then executes `unreachable`.
#include <stdio.h>

int main(void) {
    fprintf(stderr, "about to trap\n");
    fflush(stderr);
    __builtin_trap();
}
