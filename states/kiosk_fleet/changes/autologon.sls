{#- Kiosk autologon and shell: Windows logs the kiosk user on at boot and
    starts the kiosk app instead of Explorer.
      params: {"user": "<kiosk user>", "domain": ".", "shell": "C:\\Kiosk\\app.exe"}
    The password is NOT set here: a DefaultPassword registry value is readable
    by any administrator; store it as an LSA secret (Sysinternals Autologon)
    when the kiosk is imaged. #}
{%- set params = salt['pillar.get']('kiosk_change', {}) %}
{%- set user = params.get('user', salt['pillar.get']('kiosk_fleet_changes:kiosk_user', '')) %}
{%- set winlogon = 'HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\Winlogon' %}
{%- if not user %}
kiosk_autologon_needs_a_user:
  test.fail_without_changes:
    - name: 'autologon: params.user (or pillar kiosk_fleet_changes:kiosk_user) names the kiosk user'
{%- else %}
kiosk_autologon_enabled:
  kiosk_reg.present:
    - name: {{ winlogon | json }}
    - vname: AutoAdminLogon
    - data: '1'
    - vtype: REG_SZ

kiosk_autologon_user:
  kiosk_reg.present:
    - name: {{ winlogon | json }}
    - vname: DefaultUserName
    - data: {{ user | json }}
    - vtype: REG_SZ

kiosk_autologon_domain:
  kiosk_reg.present:
    - name: {{ winlogon | json }}
    - vname: DefaultDomainName
    - data: {{ params.get('domain', '.') | json }}
    - vtype: REG_SZ
{%- if params.get('shell') %}

kiosk_shell:
  kiosk_reg.present:
    - name: {{ winlogon | json }}
    - vname: Shell
    - data: {{ params['shell'] | json }}
    - vtype: REG_SZ
{%- endif %}
{%- endif %}
