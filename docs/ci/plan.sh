#!/usr/bin/env bash
# The CI dry-run, shared by the GitHub Actions workflow and the GitLab CI job
# (and run as is by tests/gitops/test_ci.py): plan the pull request's fleet
# against a saved snapshot of the hosts. No SSH key, no host access.
#
#   FLEET_DIR   the fleet's folder in the checkout (default: .)
#   OBSERVED    the snapshot written by `reconcile observe --save` (default: observed.json)
#   PLAN_MD     where the Markdown plan goes (default: plan.md)
#
# Exit code: 0 no changes, 2 changes, 1 error (the plan's own contract).
set -uo pipefail
FLEET_DIR=${FLEET_DIR:-.}
OBSERVED=${OBSERVED:-observed.json}
PLAN_MD=${PLAN_MD:-plan.md}

reconcile plan --fleet "$FLEET_DIR" --observed "$OBSERVED" --ref HEAD \
  --format markdown --detailed-exitcode >"$PLAN_MD" 2>plan.err
rc=$?
if [ "$rc" -eq 1 ]; then
  {
    echo "### reconcile plan: error"
    echo
    echo '```'
    cat plan.err
    echo '```'
  } >"$PLAN_MD"
fi
cat "$PLAN_MD"
cat plan.err >&2
exit "$rc"
