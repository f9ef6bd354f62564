/* worker/report.h: `ptel-worker report`, the admin dashboard's numbers
 * (CONTRACT §6) read straight from ClickHouse, for operators checking what
 * the drain stored without the platform's UI. */
#ifndef PTEL_REPORT_H
#define PTEL_REPORT_H

/* argv[0] is "report". Exit status: 0 report printed, 1 configuration or
 * ClickHouse failure (unreachable, table missing, query refused), 2 usage. */
int report_command(int argc, char **argv);

#endif
