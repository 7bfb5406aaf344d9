/* Adversarial load for kretprobe-based capture: N processes blocked in recvfrom() on UDP sockets nobody writes
 * to. Each holds a kretprobe instance on __x64_sys_recvfrom for as long as it sleeps, so with maxactive
 * instances taken, the returns of nginx's recvfrom calls are missed (counted only in nmissed). A receive
 * timeout makes each one re-enter recvfrom every second: an instance is taken at entry, so processes that
 * blocked before the probe was attached would hold none.
 * Usage: idle_recv N    (prints "idle_recv: N blocked" once all children sit in recvfrom; killed with the group) */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 64;
  int ready[2];
  if (n <= 0 || pipe(ready) != 0) return 2;
  for (int i = 0; i < n; i++) {
    pid_t pid = fork();
    if (pid < 0) return 1;
    if (pid == 0) {
      int s = socket(AF_INET, SOCK_DGRAM, 0);
      struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
      struct timeval tv = {.tv_sec = 1};
      if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) != 0) _exit(1);
      setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      close(ready[0]);
      (void)!write(ready[1], "x", 1);
      close(ready[1]);
      char buf[64];
      for (;;) recvfrom(s, buf, sizeof buf, 0, NULL, NULL);
    }
  }
  close(ready[1]);
  char c;
  int got = 0;
  while (got < n && read(ready[0], &c, 1) == 1) got++;
  /* A child reaches recvfrom right after its write: give the last ones a moment to block. */
  usleep(200000);
  printf("idle_recv: %d blocked\n", got);
  fflush(stdout);
  while (wait(NULL) > 0) {
  }
  return 0;
}
