/* worker/commands.h: the operator subcommands that wrap other modules
 * (drain, dlq, schema): each loads the configuration, maps it to the
 * module's options and hands over. */
#ifndef PTEL_COMMANDS_H
#define PTEL_COMMANDS_H

int drain_command(int argc, char **argv);
int dlq_command(int argc, char **argv);
int schema_command(int argc, char **argv);

#endif
