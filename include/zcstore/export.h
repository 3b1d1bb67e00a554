// ZCSTORE_EXPORT marks the symbols of the public API; everything else is hidden.
#ifndef ZCSTORE_EXPORT_H_
#define ZCSTORE_EXPORT_H_

#if defined(ZCSTORE_BUILDING_LIBRARY)
#define ZCSTORE_EXPORT [[gnu::visibility("default")]]
#else
#define ZCSTORE_EXPORT
#endif

#endif  // ZCSTORE_EXPORT_H_
