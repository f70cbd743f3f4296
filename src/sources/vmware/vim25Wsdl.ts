/**
 * The part of VMware's vim25 WSDL that hamal calls, written by hand: vCenter's own WSDL is
 * tens of thousands of lines and vcsim serves none. Kept as a string so the single binary
 * carries it. Only request shapes matter here: `soap` uses them to write and escape the
 * envelopes; replies are read with fast-xml-parser (see VsphereClient).
 */
const ops: Record<string, string> = {
  RetrieveServiceContent: '',
  Login: '<element name="userName" type="xsd:string"/><element name="password" type="xsd:string"/>',
  Logout: '',
  CurrentTime: '',
  FindByInventoryPath: '<element name="inventoryPath" type="xsd:string"/>',
  CreateContainerView:
    '<element name="container" type="vim25:ManagedObjectReference"/><element name="type" type="xsd:string" maxOccurs="unbounded"/><element name="recursive" type="xsd:boolean"/>',
  DestroyView: '',
  RetrievePropertiesEx: '<element name="specSet" type="vim25:PropertyFilterSpec" maxOccurs="unbounded"/><element name="options" type="vim25:RetrieveOptions"/>',
  ContinueRetrievePropertiesEx: '<element name="token" type="xsd:string"/>',
  ReconfigVM_Task: '<element name="spec" type="vim25:VirtualMachineConfigSpec"/>',
  CreateSnapshot_Task:
    '<element name="name" type="xsd:string"/><element name="description" type="xsd:string" minOccurs="0"/><element name="memory" type="xsd:boolean"/><element name="quiesce" type="xsd:boolean"/>',
  RemoveSnapshot_Task: '<element name="removeChildren" type="xsd:boolean"/><element name="consolidate" type="xsd:boolean" minOccurs="0"/>',
  QueryChangedDiskAreas:
    '<element name="snapshot" type="vim25:ManagedObjectReference" minOccurs="0"/><element name="deviceKey" type="xsd:int"/><element name="startOffset" type="xsd:long"/><element name="changeId" type="xsd:string"/>',
};

const types = `
<complexType name="ManagedObjectReference"><simpleContent><extension base="xsd:string"><attribute name="type" type="xsd:string"/></extension></simpleContent></complexType>
<complexType name="PropertySpec"><sequence><element name="type" type="xsd:string"/><element name="all" type="xsd:boolean" minOccurs="0"/><element name="pathSet" type="xsd:string" minOccurs="0" maxOccurs="unbounded"/></sequence></complexType>
<complexType name="SelectionSpec"><sequence><element name="name" type="xsd:string" minOccurs="0"/></sequence></complexType>
<complexType name="TraversalSpec"><complexContent><extension base="vim25:SelectionSpec"><sequence><element name="type" type="xsd:string"/><element name="path" type="xsd:string"/><element name="skip" type="xsd:boolean" minOccurs="0"/><element name="selectSet" type="vim25:SelectionSpec" minOccurs="0" maxOccurs="unbounded"/></sequence></extension></complexContent></complexType>
<complexType name="ObjectSpec"><sequence><element name="obj" type="vim25:ManagedObjectReference"/><element name="skip" type="xsd:boolean" minOccurs="0"/><element name="selectSet" type="vim25:TraversalSpec" minOccurs="0" maxOccurs="unbounded"/></sequence></complexType>
<complexType name="PropertyFilterSpec"><sequence><element name="propSet" type="vim25:PropertySpec" maxOccurs="unbounded"/><element name="objectSet" type="vim25:ObjectSpec" maxOccurs="unbounded"/></sequence></complexType>
<complexType name="RetrieveOptions"><sequence><element name="maxObjects" type="xsd:int" minOccurs="0"/></sequence></complexType>
<complexType name="VirtualMachineConfigSpec"><sequence><element name="changeTrackingEnabled" type="xsd:boolean" minOccurs="0"/></sequence></complexType>`;

const element = (name: string, body: string) =>
  `<element name="${name}"><complexType><sequence><element name="_this" type="vim25:ManagedObjectReference"/>${body}</sequence></complexType></element>` +
  `<element name="${name}Response"><complexType><sequence><element name="returnval" type="xsd:anyType" minOccurs="0" maxOccurs="unbounded"/></sequence></complexType></element>`;

const names = Object.keys(ops);

export const VIM25_WSDL = `<?xml version="1.0" encoding="UTF-8"?>
<definitions targetNamespace="urn:vim25Service" xmlns="http://schemas.xmlsoap.org/wsdl/" xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/"
  xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:vim25="urn:vim25" xmlns:interface="urn:vim25Service">
<types><schema targetNamespace="urn:vim25" xmlns="http://www.w3.org/2001/XMLSchema" xmlns:vim25="urn:vim25" elementFormDefault="qualified">
${types}
${names.map((n) => element(n, ops[n]!)).join('\n')}
</schema></types>
${names.map((n) => `<message name="${n}RequestMsg"><part name="parameters" element="vim25:${n}"/></message><message name="${n}ResponseMsg"><part name="parameters" element="vim25:${n}Response"/></message>`).join('\n')}
<portType name="VimPortType">${names.map((n) => `<operation name="${n}"><input message="interface:${n}RequestMsg"/><output message="interface:${n}ResponseMsg"/></operation>`).join('')}</portType>
<binding name="VimBinding" type="interface:VimPortType"><soap:binding style="document" transport="http://schemas.xmlsoap.org/soap/http"/>
${names.map((n) => `<operation name="${n}"><soap:operation soapAction="urn:vim25/6.5"/><input><soap:body use="literal"/></input><output><soap:body use="literal"/></output></operation>`).join('\n')}
</binding>
<service name="VimService"><port binding="interface:VimBinding" name="VimPort"><soap:address location="https://localhost/sdk"/></port></service>
</definitions>`;

export type Vim25Method = keyof typeof ops;
