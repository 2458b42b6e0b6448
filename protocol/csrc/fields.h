/* The canonical CSV's quoted value, read the same way by the row checks (native.c) and by
 * edu_rows (sqlite_rows.c). */
#ifndef EDU_FIELDS_H
#define EDU_FIELDS_H
#include <stddef.h>
#include <string.h>

/* From just after an opening quote: the closing quote, or NULL when none comes before end.
 * Each doubled quote ("", one quote of the value) inside adds one to *doubled. */
static inline const char *
closing_quote(const char *q, const char *end, size_t *doubled)
{
    for (;;) {
        q = memchr(q, '"', (size_t)(end - q));
        if (!q)
            return NULL;
        if (q + 1 < end && q[1] == '"') {
            ++*doubled;
            q += 2;
            continue;
        }
        return q;
    }
}

#endif
