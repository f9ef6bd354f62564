/* tasks/drain_task.h: glue between the Celery task run_product_telemetry_consumer
 * and the drain engine (tasks/drain.h): builds drain options from the worker
 * configuration, keeps one drain session per pool slot, and turns the drain
 * result into the task's return value. */
#ifndef PTEL_DRAIN_TASK_H
#define PTEL_DRAIN_TASK_H

#include "tasks/task.h"

void drain_task_run(task_context *ctx, int max_iterations, task_outcome *out);
void drain_task_slot_free(void **slot_state);

#endif
