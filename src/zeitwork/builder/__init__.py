"""The builder: a service that leases build jobs from the operator, builds them with buildah
and hands the image back (``zeitwork builder``)."""
