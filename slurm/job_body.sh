# shellcheck shell=bash
# shellcheck disable=SC2154  # RUN_DIR, ATTEMPTS, STEP_CMD, ...: assigned by the header `atom submit` renders
# The logic of every atom job, after the header slurm/script.py renders (#SBATCH lines, the profile's
# environment, this job's values and the step command, STEP_CMD). Rendered scripts carry it verbatim;
# `make lint` runs shellcheck on this file, tests/slurm/test_render.py on every rendered script.

attempt() {  # attempt OUTCOME RC NOTE: one line per attempt, read by `atom jobs`
    printf "%s\t%s\t%s\t%s\t%s\t%s\n" "$(date -u +%FT%TZ)" "$SLURM_JOB_ID" "$RESTART" "$1" "$2" "$3" \
        >>"$ATTEMPTS"
    echo "atom-job: $1 (exit $2) $3"
}
count() { awk -F'\t' -v j="$SLURM_JOB_ID" -v o="$1" '$2 == j && $4 == o' "$ATTEMPTS" 2>/dev/null | wc -l; }

if (( RESTART > MAX_REQUEUES + MAX_FAILURES )); then
    attempt gave-up 1 "restart $RESTART exceeds max_requeues + max_failures"; exit 1
fi

# --- preemption: SLURM's warning (--signal=B:USR1@N), scancel --signal=USR1 --batch, or SIGTERM ---
STOP_REQUESTED=0
# shellcheck disable=SC2329  # invoked by the trap below
on_warning() { STOP_REQUESTED=1; echo "atom-job: stop requested, ranks checkpoint at the next step"; touch "$RUN_DIR/STOP"; }
trap on_warning USR1 TERM
rm -f "$RUN_DIR/STOP"

"${STEP_CMD[@]}" &
STEP=$!
while kill -0 "$STEP" 2>/dev/null; do wait "$STEP"; done  # a trapped signal interrupts wait
wait "$STEP"; rc=$?

# every rank writes its exit code as it ends; read them only once all are there (shared FS latency)
exits_written() { find "$ATOM_LOG_DIR" -maxdepth 1 -name 'rank*.exit' 2>/dev/null | wc -l; }
for _ in $(seq 60); do (( $(exits_written) >= EXPECTED_RANKS )) && break; sleep 1; done
codes=$(cat "$ATOM_LOG_DIR"/rank*.exit 2>/dev/null | sort -u | tr "\n" " ")
other=$(for c in $codes; do [[ $c != 0 && $c != "$EXIT_REQUEUE" ]] && echo "$c"; done)
if (( $(exits_written) < EXPECTED_RANKS )); then
    other="$other missing"; codes="$codes missing"
fi
if (( rc == 0 )); then
    attempt completed 0 ""; exit 0
fi
if [[ " $codes " == *" $EXIT_USER_ERROR "* ]] && (( ! STOP_REQUESTED )); then
    attempt user-error "$rc" "a rank exited $EXIT_USER_ERROR (bad config or input): not resubmitted"; exit "$EXIT_USER_ERROR"
fi
if (( STOP_REQUESTED )) || [[ " $codes " == *" $EXIT_REQUEUE "* && -z $other ]]; then
    n=$(count preempted)
    if (( n < MAX_REQUEUES )); then
        attempt preempted "$rc" "requeue $((n + 1)) of $MAX_REQUEUES (rank exits: $codes)"
        scontrol requeue "$SLURM_JOB_ID"; exit 0
    fi
    attempt requeue-limit "$rc" "max_requeues=$MAX_REQUEUES reached; resubmit by hand to continue"; exit "$EXIT_REQUEUE"
fi
n=$(count failed)
if (( n < MAX_FAILURES )); then
    attempt failed "$rc" "resubmit $((n + 1)) of $MAX_FAILURES from the last checkpoint (rank exits: $codes)"
    scontrol requeue "$SLURM_JOB_ID"; exit 0
fi
attempt failure-limit "$rc" "max_failures=$MAX_FAILURES reached (rank exits: $codes)"; exit "$rc"
