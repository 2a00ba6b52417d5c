package main

import (
	"fmt"
	"os"
)

const bashCompletion = `# bash completion for corral; load with: source <(corral completion bash)
_corral() {
    local cur prev words cword
    _init_completion 2>/dev/null || { cur="${COMP_WORDS[COMP_CWORD]}"; prev="${COMP_WORDS[COMP_CWORD-1]}"; words=("${COMP_WORDS[@]}"); cword=$COMP_CWORD; }
    local cmds="login ws exec cp chat conversation completion keys serve version help"
    if [[ $cword -eq 1 ]]; then
        COMPREPLY=($(compgen -W "$cmds" -- "$cur")); return
    fi
    case "${words[1]}" in
        ws)
            if [[ $cword -eq 2 ]]; then COMPREPLY=($(compgen -W "create ls get rm" -- "$cur")); return; fi
            case "${words[2]}" in
                create) COMPREPLY=($(compgen -W "--image --memory --cpus --network --allow --env -o" -- "$cur"));;
                get|rm) COMPREPLY=($(compgen -W "$(corral ws ls -o json 2>/dev/null | sed -n 's/.*"id": "\(ws_[^"]*\)".*/\1/p')" -- "$cur"));;
                ls) COMPREPLY=($(compgen -W "-o" -- "$cur"));;
            esac;;
        exec) COMPREPLY=($(compgen -W "-i -t -it --cwd --env $(corral ws ls -o json 2>/dev/null | sed -n 's/.*"id": "\(ws_[^"]*\)".*/\1/p')" -- "$cur"));;
        cp) COMPREPLY=($(compgen -f -- "$cur"));;
        chat) COMPREPLY=($(compgen -W "--workspace --conversation -o" -- "$cur"));;
        conversation)
            if [[ $cword -eq 2 ]]; then COMPREPLY=($(compgen -W "follow ls" -- "$cur")); return; fi
            COMPREPLY=($(compgen -W "--after -o" -- "$cur"));;
        keys) [[ $cword -eq 2 ]] && COMPREPLY=($(compgen -W "create list revoke" -- "$cur"));;
        completion) COMPREPLY=($(compgen -W "bash zsh" -- "$cur"));;
        -o) COMPREPLY=(json);;
    esac
    [[ "$prev" == "-o" ]] && COMPREPLY=(json)
}
complete -F _corral corral
`

const zshCompletion = `#compdef corral
# zsh completion for corral; load with: source <(corral completion zsh)
_corral_workspaces() {
    local -a ids
    ids=(${(f)"$(corral ws ls -o json 2>/dev/null | sed -n 's/.*"id": "\(ws_[^"]*\)".*/\1/p')"})
    _describe 'workspace' ids
}
_corral() {
    local -a cmds
    cmds=(
        'login:store a server URL and API key'
        'ws:create, list, show and delete workspaces'
        'exec:run a command in a workspace'
        'cp:copy files in and out of a workspace'
        'chat:send a message to an agent and watch it work'
        'conversation:follow or list conversations'
        'completion:print a shell completion script'
        'keys:manage API keys (on the server host)'
        'serve:run the API server'
        'version:print the version'
    )
    if (( CURRENT == 2 )); then
        _describe 'command' cmds
        return
    fi
    case "$words[2]" in
        ws)
            if (( CURRENT == 3 )); then
                local -a sub; sub=('create:create a workspace' 'ls:list workspaces' 'get:show a workspace' 'rm:delete workspaces')
                _describe 'ws command' sub
            elif [[ "$words[3]" == (get|rm) ]]; then
                _corral_workspaces
            else
                _arguments '--image[image]:image:' '--memory[memory limit]:size:' '--cpus[CPU share]:cpus:' '--network[network mode]:mode:(none open allowlist)' '*--allow[allowed host]:host:' '*--env[K=V]:env:' '-o[output]:format:(json)'
            fi;;
        exec) _arguments '-i[pass stdin]' '-t[terminal]' '--cwd[working directory]:dir:' '*--env[K=V]:env:' '1:workspace:_corral_workspaces' '*::command:_normal';;
        cp) _files;;
        chat) _arguments '--workspace[workspace]:workspace:_corral_workspaces' '--conversation[conversation]:id:' '-o[output]:format:(json)';;
        conversation)
            if (( CURRENT == 3 )); then
                local -a sub; sub=('follow:follow events' 'ls:list conversations')
                _describe 'conversation command' sub
            else
                _arguments '--after[after seq]:seq:' '-o[output]:format:(json)'
            fi;;
        keys) (( CURRENT == 3 )) && { local -a sub; sub=(create list revoke); _describe 'keys command' sub; };;
        completion) local -a sh; sh=(bash zsh); _describe 'shell' sh;;
    esac
}
compdef _corral corral
`

func completionCommand(args []string) error {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: corral completion bash|zsh\n\n  source <(corral completion bash)    # in ~/.bashrc\n  source <(corral completion zsh)     # in ~/.zshrc")
		return errUsage
	}
	switch args[0] {
	case "bash":
		fmt.Print(bashCompletion)
	case "zsh":
		fmt.Print(zshCompletion)
	default:
		return fmt.Errorf("completion: unknown shell %q (bash or zsh)", args[0])
	}
	return nil
}
