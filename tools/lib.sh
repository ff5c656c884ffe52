# What the bash tools share; sourced, never run (the Python tools share
# tools/benchlib.py). A tool starts with
#
#   cd "$(dirname "$0")/.."
#   source tools/lib.sh
#   znbd_flags seconds=30 rounds=2 -- "$@"
#
# znbd_flags NAME=DEFAULT... -- ARGS
#     Parses GNU-style flags: `--NAME VALUE` or `--NAME=VALUE` sets the shell
#     variable NAME (dashes become underscores), DEFAULT when absent.
#     --help (or -h) prints the tool's header (its leading comment) and
#     exits 0; any other argument is one line on stderr and exit 64.
# znbd_usage_error MESSAGE      that line, and exit 64
# znbd_positive NAME VALUE      exit 64 unless VALUE is an integer > 0
# znbd_setup                    tools/setup: packages, Swift on PATH
# znbd_build PRODUCT...         znbd_setup, then a release build of each
#                               product (log in tools/out/build.log, shown
#                               on failure); sets ZNBD_BIN to their folder
# znbd_scratch                  a temporary folder in ZNBD_SCRATCH
# znbd_track PID                a process to kill at exit
# At exit (an EXIT trap set here): every tracked process is killed and
# waited for, then ZNBD_SCRATCH is removed.
#
# ZNBD_TOOL is the tool's name (for messages), ZNBD_ROOT the repository.

ZNBD_TOOL=$(basename "$0")
ZNBD_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

znbd_usage_error() {
    echo "$ZNBD_TOOL: $1 (tools/$ZNBD_TOOL --help)" >&2
    exit 64
}

znbd_help() {
    # The header: the comment lines after the #! line, up to the first
    # line that is not a comment.
    awk 'NR == 1 { next } !/^#/ { exit } { sub(/^# ?/, ""); print }' "$0"
    exit 0
}

znbd_flags() {
    local -A value_flags=()
    local spec name
    while (($#)) && [[ $1 != -- ]]; do
        spec=$1
        shift
        name=${spec%%=*}
        value_flags[$name]=1
        printf -v "${name//-/_}" '%s' "${spec#*=}"
    done
    [[ ${1:-} == -- ]] && shift
    local argument flag
    while (($#)); do
        argument=$1
        shift
        case $argument in
        -h | --help) znbd_help ;;
        --*=*)
            flag=${argument%%=*}
            flag=${flag#--}
            [[ -n ${value_flags[$flag]:-} ]] || znbd_usage_error "unknown argument ${argument%%=*}"
            printf -v "${flag//-/_}" '%s' "${argument#*=}"
            ;;
        --*)
            flag=${argument#--}
            [[ -n ${value_flags[$flag]:-} ]] || znbd_usage_error "unknown argument $argument"
            (($#)) || znbd_usage_error "$argument needs a value"
            printf -v "${flag//-/_}" '%s' "$1"
            shift
            ;;
        *) znbd_usage_error "unknown argument $argument" ;;
        esac
    done
}

znbd_positive() {
    [[ $2 =~ ^[0-9]+$ ]] && (($2 > 0)) || znbd_usage_error "--$1 must be a positive integer, got '$2'"
}

znbd_setup() {
    source "$ZNBD_ROOT/tools/setup"
}

znbd_build() {
    znbd_setup
    mkdir -p "$ZNBD_ROOT/tools/out"
    local log="$ZNBD_ROOT/tools/out/build.log" product
    : >"$log"
    for product in "$@"; do
        (cd "$ZNBD_ROOT" && swift build -c release --product "$product") >>"$log" 2>&1 || {
            cat "$log" >&2
            exit 1
        }
    done
    ZNBD_BIN=$(cd "$ZNBD_ROOT" && swift build -c release --show-bin-path)
}

ZNBD_PIDS=()
znbd_track() {
    ZNBD_PIDS+=("$1")
}

znbd_cleanup() {
    local pid
    for pid in ${ZNBD_PIDS[@]+"${ZNBD_PIDS[@]}"}; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in ${ZNBD_PIDS[@]+"${ZNBD_PIDS[@]}"}; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n ${ZNBD_SCRATCH:-} ]]; then rm -rf "$ZNBD_SCRATCH"; fi
}

trap znbd_cleanup EXIT

znbd_scratch() {
    ZNBD_SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/$ZNBD_TOOL.XXXXXX")
}
