// env: prints the value of GREETING and a newline, or "unset" when the
// variable is not in the guest's environment.
#include <stdio.h>
#include <stdlib.h>

int main(void) {
    const char *greeting = getenv("GREETING");
    if (greeting == NULL) {
        fputs("unset\n", stdout);
    } else {
        fputs(greeting, stdout);
        fputc('\n', stdout);
    }
    return 0;
}
