/* worker/commands.c: see commands.h. */
#include "worker/commands.h"

#include <stdio.h>

int drain_command(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "error: drain is not available in this build yet\n");
    return 2;
}

int dlq_command(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "error: dlq is not available in this build yet\n");
    return 2;
}

int schema_command(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "error: schema is not available in this build yet\n");
    return 2;
}
