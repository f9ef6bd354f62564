/* tasks/drain_task.c: see drain_task.h. Until the drain engine is wired in,
 * the task reports that it processed nothing. */
#include "tasks/drain_task.h"

void drain_task_run(task_context *ctx, int max_iterations, task_outcome *out)
{
    (void)ctx;
    (void)max_iterations;
    pj_value *result = pj_new_object();
    pj_object_set(result, "processed", pj_new_int(0));
    task_succeed(out, result);
}

void drain_task_slot_free(void **slot_state)
{
    (void)slot_state;
}
