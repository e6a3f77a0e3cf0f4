// A self-signed certificate for 127.0.0.1 and localhost (valid to Nov 12 05:07:18 2126 GMT), for tests of
// the HTTP transport over TLS. Made with: openssl req -x509 -newkey ec -pkeyopt
// ec_paramgen_curve:prime256v1 -nodes -days 36500 -subj '/CN=vhdx test server' -addext
// 'subjectAltName=IP:127.0.0.1,DNS:localhost'. Test-only: its key is public.
export const TEST_TLS_CERT = `-----BEGIN CERTIFICATE-----
MIIBqDCCAU+gAwIBAgIUD1iit1i6NAjAADRcKsU6o0u4KrIwCgYIKoZIzj0EAwIw
GzEZMBcGA1UEAwwQdmhkeCB0ZXN0IHNlcnZlcjAgFw0yNjEyMDYwNTA3MThaGA8y
MTI2MTExMjA1MDcxOFowGzEZMBcGA1UEAwwQdmhkeCB0ZXN0IHNlcnZlcjBZMBMG
ByqGSM49AgEGCCqGSM49AwEHA0IABHfiGIvgJZgoe+r6EW6/iQ2HlFo2oChrmna+
27B8lb6yjUL1C8KhxOLw2rjbaWGo2hbnxqYQObYUwyENaaglMwqjbzBtMB0GA1Ud
DgQWBBRwLSI/oP/UdNOl+gLiIqi/H3MBcTAfBgNVHSMEGDAWgBRwLSI/oP/UdNOl
+gLiIqi/H3MBcTAPBgNVHRMBAf8EBTADAQH/MBoGA1UdEQQTMBGHBH8AAAGCCWxv
Y2FsaG9zdDAKBggqhkjOPQQDAgNHADBEAiBWUiJz7kx+iCy5m9b0Qh8szfTPEtX+
3vL10rgAHVP9yQIgPVCplZow0S5bnoxO3pxoZcUuY7svzE56Cs/hod5BI+c=
-----END CERTIFICATE-----
`;
export const TEST_TLS_KEY = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgOP9QZEVLjV0ybBzl
4q0WH1UNc7TkRmygvLkU+UJMKYehRANCAAR34hiL4CWYKHvq+hFuv4kNh5RaNqAo
a5p2vtuwfJW+so1C9QvCocTi8Nq422lhqNoW58amEDm2FMMhDWmoJTMK
-----END PRIVATE KEY-----
`;
