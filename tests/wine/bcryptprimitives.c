/*
 * A stand-in for Windows' bcryptprimitives.dll, for Wine older than 8.13 (Debian 12 has
 * Wine 8.0), which lacks it. Rust's standard library (since 1.78) and getrandom take their
 * random bytes from ProcessPrng in that DLL, so without it no Rust program starts under such a
 * Wine ("Library bcryptprimitives.dll ... not found", exit 53). Windows 10 and 11 have the
 * real DLL; this one is only ever put into a test's Wine prefix (tests/tests/windows.rs).
 *
 * ProcessPrng fills the buffer from RtlGenRandom (advapi32's SystemFunction036), which Wine
 * implements over the host's random source.
 *
 * x86_64-w64-mingw32-gcc -shared -s -O2 -o bcryptprimitives.dll bcryptprimitives.c
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG chunk = length > 0x10000000 ? 0x10000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
