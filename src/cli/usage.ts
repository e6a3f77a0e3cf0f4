/** Each subcommand's usage line, apart from its code so that --help loads no command. */
export const CHECK_USAGE = 'vhdx check [-p] [-U] [--output=human|json] [-r leaks|all] FILE';
export const CONVERT_USAGE = 'vhdx convert [-p] [-U] [-f raw|vhdx] [-O raw|vhdx] [-o OPTIONS] [--parents=relative|any|none] SRC DST';
export const CREATE_USAGE = 'vhdx create [-q] [-p] [-o OPTIONS] [-b PARENT [--parents=relative|any|none]] FILE [SIZE]';
export const INFO_USAGE = 'vhdx info [-U] [--output=human|json] [--allocation=auto|always|never] [--parents=relative|any|none] FILE';
export const IO_USAGE = 'vhdx io [-r [-U]] [-q] [--parents=relative|any|none] -c COMMAND [-c COMMAND]... FILE';
export const MAP_USAGE = 'vhdx map [-U] [--output=human|json] [--parents=relative|any|none] FILE';
export const SERVE_USAGE = 'vhdx serve [-r [-U]] [-f raw|vhdx] [--bind ADDR] [--port N | --socket PATH] [--export-name NAME] [--parents=relative|any|none] FILE';
export const COMMIT_USAGE = 'vhdx commit [-q] [-p] [-d] [--parents=relative|any] CHILD';
export const REBASE_USAGE = 'vhdx rebase -u -b NEWPARENT [--parents=relative|any|none] CHILD';
