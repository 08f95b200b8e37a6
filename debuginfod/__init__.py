"""debuginfod client: debug files, executables and sources fetched by build-id over HTTP.

Compatible with elfutils' libdebuginfod 0.188: the same DEBUGINFOD_* variables and the same cache
layout, so ubt, gdb and `debuginfod-find` share what any of them downloaded.

- `config`: settings from the environment (`ClientConfig.from_env`);
- `artifact`: what is asked for, its URL path and its cache name;
- `cache`: the on-disk cache (atomic writes, negative hits, cleaning);
- `download`: one HTTP GET within the time and size limits;
- `elfid`: build-ids of ELF files (to check downloads);
- `section`: sections extracted from a cached debuginfo or executable;
- `client`: `DebuginfodClient.find(build_id, kind, arg)` → cached path;
- `hook`: the `symbolizer.locate` hook, installed when DEBUGINFOD_URLS is set;
- `progress`: the download progress line on stderr.
"""
