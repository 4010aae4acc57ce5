/* core/digest.c: see digest.h. */
#include "core/digest.h"

#include "core/alloc.h"

#include <openssl/evp.h>
#include <string.h>

void digest_sha256_hex(const char *s, char out[DIGEST_SHA256_HEX_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (EVP_Digest(s, strlen(s), md, &n, EVP_sha256(), NULL) != 1 || n != DIGEST_SHA256_HEX_LEN / 2)
        ECOM_ASSERT(!"SHA-256 failed");
    for (unsigned int i = 0; i < n; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[DIGEST_SHA256_HEX_LEN] = '\0';
}
