# benches/lib/ab.sh: the bookkeeping of the interleaved old/new A/B scripts
# (tools/log_append_ab.sh, tools/ab_write_path.sh); sourced, not run on its own.
#
# ab_record "BUILD KEY" VALUE: appends VALUE to the figures of BUILD (old or new) under KEY.
# ab_summary ROUNDS: one line per KEY with the median of each build's figures and the figures.

declare -A AB_RESULTS
ab_record() { AB_RESULTS["$1"]="${AB_RESULTS[$1]:-} $2"; }
ab_median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
ab_summary() {
    local key
    printf '%s\n' "${!AB_RESULTS[@]}" | sed -E 's/^(old|new) //' | sort -u | while read -r key; do
        echo "median of $1 rounds, $key: old $(ab_median "${AB_RESULTS["old $key"]:-}") | new $(ab_median "${AB_RESULTS["new $key"]:-}")  (old:${AB_RESULTS["old $key"]:-}; new:${AB_RESULTS["new $key"]:-})"
    done
}
