/* tasks/builtin.h: the task functions the registry names. Diagnostic tasks
 * (ptel.*) exist so operators and tests can exercise the worker without
 * touching telemetry; the drain task is the worker's real job. */
#ifndef PTEL_BUILTIN_H
#define PTEL_BUILTIN_H

#include "tasks/task.h"

void task_ping(task_context *ctx, task_outcome *out);
void task_echo(task_context *ctx, task_outcome *out);
void task_sleep_task(task_context *ctx, task_outcome *out);
void task_fail_task(task_context *ctx, task_outcome *out);
void task_flaky(task_context *ctx, task_outcome *out);
void task_run_product_telemetry_consumer(task_context *ctx, task_outcome *out);

#endif
