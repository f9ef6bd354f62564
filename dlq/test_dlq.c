/* dlq/test_dlq.c: being written */
int main(void) { return 77; }
