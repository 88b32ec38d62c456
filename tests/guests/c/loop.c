// loop: spins forever. The volatile counter keeps the compiler from proving
// the loop has no side effects and deleting it, so only the host's timeout
// (epoch interruption) can stop this guest.
int main(void) {
    volatile unsigned long long counter = 0;
    for (;;) {
        counter++;
    }
}
