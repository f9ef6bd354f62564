/* worker/send.h: the `ptel-worker send` subcommand (see send.c). */
#ifndef PTEL_SEND_H
#define PTEL_SEND_H

int send_main(int argc, char **argv);

#endif
