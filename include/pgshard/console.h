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

#endif
