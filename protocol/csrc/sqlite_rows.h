/* The edu_rows SQLite virtual table (sqlite_rows.c), seen from the Python module (native.c). */
#ifndef EDU_SQLITE_ROWS_H
#define EDU_SQLITE_ROWS_H
#include <stddef.h>

/* Register edu_rows for every SQLite connection opened from now on, in the SQLite library
 * that the already loaded module at sqlite_module_path (Python's _sqlite3) uses. 0 when
 * registered; -1 with the reason in error. */
int edu_rows_register(const char *sqlite_module_path, char *error, size_t error_size);

#endif
