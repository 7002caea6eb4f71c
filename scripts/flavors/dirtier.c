/* The flavors lab's guest workload (scripts/flavors-lab.sh): dirties a
 * working set of WS MiB at RATE MiB/s (one write per 4 KiB page, cycling
 * through the set, so RATE is unique pages made dirty per second once the
 * set is filled) and sends a 32-byte UDP datagram to each PEER every 2 ms,
 * so the wire sees the guest wherever it runs.
 *
 *   dirtier WS_MIB RATE_MIB_S PEER_IP...
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define TICK_NS 2000000L
#define PAGE 4096L

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: dirtier WS_MIB RATE_MIB_S PEER_IP...\n");
        return 2;
    }
    long ws = atol(argv[1]) * 1024 * 1024, rate = atol(argv[2]) * 1024 * 1024;
    long pages = ws / PAGE;
    unsigned char *mem = malloc(ws);
    if (!mem) return 1;
    memset(mem, 0xa5, ws); /* the whole set, non-zero (zero pages travel for free) */
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    int npeers = argc - 3;
    struct sockaddr_in peers[8];
    for (int i = 0; i < npeers && i < 8; i++) {
        memset(&peers[i], 0, sizeof peers[i]);
        peers[i].sin_family = AF_INET;
        peers[i].sin_port = htons(9);
        inet_pton(AF_INET, argv[3 + i], &peers[i].sin_addr);
    }
    char msg[32] = "vmsentry flavors lab";
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    long page = 0, due = 0, counter = 0;
    for (;;) {
        for (int i = 0; i < npeers && i < 8; i++)
            sendto(s, msg, sizeof msg, 0, (struct sockaddr *)&peers[i], sizeof peers[i]);
        /* Bytes due this tick, as pages. */
        due += rate / (1000000000L / TICK_NS);
        while (due >= PAGE && pages > 0) {
            mem[page * PAGE + (counter % PAGE)] = (unsigned char)counter;
            counter++;
            page = (page + 1) % pages;
            due -= PAGE;
        }
        next.tv_nsec += TICK_NS;
        if (next.tv_nsec >= 1000000000L) {
            next.tv_nsec -= 1000000000L;
            next.tv_sec++;
        }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
    }
}
