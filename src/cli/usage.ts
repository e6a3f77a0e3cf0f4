/** Each subcommand's usage line, apart from its code so that --help loads no command. */
export const CHECK_USAGE = 'vhdx check [-p] [--output=human|json] [-r leaks|all] FILE';
export const CONVERT_USAGE = 'vhdx convert [-p] [-f raw|vhdx] [-O raw|vhdx] [-o OPTIONS] SRC DST';
export const CREATE_USAGE = 'vhdx create [-q] [-p] [-o OPTIONS] FILE SIZE';
export const INFO_USAGE = 'vhdx info [--output=human|json] [--allocation=auto|always|never] FILE';
export const IO_USAGE = 'vhdx io [-r] [-q] -c COMMAND [-c COMMAND]... FILE';
export const MAP_USAGE = 'vhdx map [--output=human|json] FILE';
