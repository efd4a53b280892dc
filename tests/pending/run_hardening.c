/* run_hardening.c - runs the pending hardening suite (issue 15) alone.
 *
 * tests/pending/ is not built by `make check`: these tests fail or hang on
 * the library until the fixes land. Build this file with
 * check_hardening.c and testutil.c against a library build (the command is
 * in check_hardening.c's header). CK_RUN_CASE / CK_RUN_TEST narrow the run
 * as usual with Check. Exit status is 0 only when every test passed.
 */
#include <check.h>
#include <stdlib.h>

Suite *hardening_suite(void);

int main(void) {
  SRunner *sr = srunner_create(hardening_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
