/*
 * console.h — the admin console (admin.c): a client of the database "pgshard".
 */
#ifndef PGSHARD_CONSOLE_H
#define PGSHARD_CONSOLE_H

#include "pgshard/proxy.h"

/* The admin console (admin.c): a client of the database "pgshard". */
void pgs_admin_login(pgs_client_t *client);
void pgs_admin_process(pgs_client_t *client);
void pgs_admin_free(pgs_client_t *client);

/* Where admin.c reaches the client connection (client.c's table). */
void pgs_admin_set_session_ops(const pgs_session_ops_t *ops);

#endif
