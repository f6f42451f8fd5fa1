# errno -> Python exceptions. Native code returns -1 and an errno; this is the
# only place that turns one into an exception.

cdef object os_error(int err, str what):
    return OSError(err, f"{what}: {strerror(err).decode()}")


cdef int check_errno(int result, str what) except -1:
    if result < 0:
        raise os_error(errno, what)
    return result
