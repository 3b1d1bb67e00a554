/* Links against the installed libzcstore_c through pkg-config: a put and a get. */
#include <stdio.h>
#include <string.h>

#include <zcstore/zcstore_c.h>

int main(void) {
  zcs_store* store = NULL;
  zcs_view* view = NULL;
  zcs_id id;
  const void* data = NULL;
  size_t size = 0;
  zcs_buffer b = {"payload", 7};
  if (zcs_store_create(NULL, NULL, &store) != ZCS_OK || zcs_id_random(&id) != ZCS_OK ||
      zcs_put(store, id, "m", 1, &b, 1) != ZCS_OK || zcs_get(store, id, &view) != ZCS_OK ||
      zcs_view_buffer(view, 0, &data, &size) != ZCS_OK || size != 7 ||
      memcmp(data, "payload", 7) != 0) {
    fprintf(stderr, "consumer_c: %s\n", zcs_last_error());
    return 1;
  }
  zcs_view_release(view);
  zcs_store_close(store);
  printf("consumer_c ok (zcstore %s, ABI %u)\n", zcs_version(), zcs_abi_version());
  return 0;
}
