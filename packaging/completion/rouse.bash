# bash completion for rouse(8)                             -*- shell-script -*-

# _rouse_apps prints the app names: from the running daemon when its control
# socket is reachable (root, or a member of the group rouse), else from the
# configuration. $1... are the -c/--control options already on the line.
_rouse_apps()
{
    local out
    out=$(timeout 2 rouse status --json "$@" 2>/dev/null) &&
        sed -n 's/^ *"name": *"\([^"]*\)".*/\1/p' <<<"$out" && return
    # Without --control, `rouse check` reads the same file the daemon does.
    local args=() i
    for ((i = 1; i <= $#; i++)); do
        case ${!i} in
            -c | --config) args+=(-c); ((i++)); args+=("${!i}") ;;
        esac
    done
    timeout 2 rouse check "${args[@]}" 2>/dev/null |
        sed -n 's/^\([A-Za-z0-9_.-]\{1,\}\) (.*/\1/p'
}

_rouse()
{
    local cur prev words cword
    _init_completion || return

    # The verbs are the ones `rouse help` lists, so they follow the binary.
    local verbs
    verbs=$(rouse help 2>/dev/null |
        sed -n 's/^  rouse \([a-z|]\{1,\}\).*/\1/p' | tr '|' ' ')

    local verb="" i conn=() npos=0
    for ((i = 1; i < cword; i++)); do
        case ${words[i]} in
            -c | --config | --control)
                conn+=("${words[i]}" "${words[i + 1]}")
                ((i++))
                ;;
            -*) ;;
            *) if [[ -z $verb ]]; then verb=${words[i]}; else ((npos++)); fi ;;
        esac
    done

    case $prev in
        -c | --config)
            _filedir toml
            return
            ;;
        --control)
            _filedir sock
            return
            ;;
        -hello | -echo)
            return
            ;;
    esac

    if [[ -z $verb ]]; then
        COMPREPLY=($(compgen -W "$verbs help" -- "$cur"))
        return
    fi

    local opts=""
    case $verb in
        run) opts="-c --config" ;;
        check) opts="-c --config --strict" ;;
        status) opts="--json -c --config --control" ;;
        start | stop | restart | reload) opts="-c --config --control" ;;
        demo) opts="-hello -echo" ;;
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
        return
    fi
    ((npos == 0)) || return
    case $verb in
        status | start | stop | restart)
            COMPREPLY=($(compgen -W "$(_rouse_apps "${conn[@]}")" -- "$cur"))
            ;;
    esac
} &&
    complete -F _rouse rouse

# ex: filetype=sh
